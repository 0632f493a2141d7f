# tandem_warnings(target): strict warnings for Tandem's own code (errors with TANDEM_WERROR).
add_library(tandem_build_flags INTERFACE)
target_compile_options(tandem_build_flags INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wno-missing-field-initializers>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CXX_COMPILER_ID:GNU>>:-Wshadow=local>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${TANDEM_WERROR}>>:-Werror>)
if(TANDEM_SANITIZE)
  target_compile_options(tandem_build_flags INTERFACE
    $<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined>)
  target_link_options(tandem_build_flags INTERFACE -fsanitize=address,undefined)
endif()
function(tandem_warnings target)
  target_link_libraries(${target} PRIVATE $<BUILD_INTERFACE:tandem_build_flags>)
endfunction()
