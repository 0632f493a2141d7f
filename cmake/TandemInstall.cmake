# `cmake --install` produces a relocatable package: find_package(Tandem CONFIG) gives
# Tandem::tandem (C++) and Tandem::tandem_c (the C ABI), plus a pkg-config file for the C ABI.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(TANDEM_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/Tandem)
set(install_targets tandem_formats tandem_text tandem_engine tandem)
if(TARGET tandem_c)
  list(APPEND install_targets tandem_c)
endif()
if(TARGET tandem_cuda)  # tandem_engine links it (privately) in CUDA builds
  list(APPEND install_targets tandem_cuda)
endif()
install(TARGETS ${install_targets} EXPORT TandemTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(TARGET tandem_cli)
  install(TARGETS tandem_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
# include/tandem/server belongs to tandem_server, which only the CLI links: not part of the package.
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/tandem DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        PATTERN server EXCLUDE)
if(EXISTS ${PROJECT_SOURCE_DIR}/capi/include/tandem.h)
  install(FILES ${PROJECT_SOURCE_DIR}/capi/include/tandem.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
endif()
install(EXPORT TandemTargets NAMESPACE Tandem:: DESTINATION ${TANDEM_INSTALL_CMAKEDIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/TandemConfig.cmake.in
  ${PROJECT_BINARY_DIR}/TandemConfig.cmake INSTALL_DESTINATION ${TANDEM_INSTALL_CMAKEDIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/TandemConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/TandemConfig.cmake ${PROJECT_BINARY_DIR}/TandemConfigVersion.cmake
  DESTINATION ${TANDEM_INSTALL_CMAKEDIR})
# The .pc file finds the prefix from its own location, so the installed tree can be moved.
file(RELATIVE_PATH TANDEM_PC_TO_PREFIX ${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_LIBDIR}/pkgconfig
     ${CMAKE_INSTALL_PREFIX})
string(REGEX REPLACE "/$" "" TANDEM_PC_TO_PREFIX "${TANDEM_PC_TO_PREFIX}")
configure_file(${PROJECT_SOURCE_DIR}/cmake/tandem.pc.in ${PROJECT_BINARY_DIR}/tandem.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/tandem.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
