# TANDEM_CUDA=AUTO builds the CUDA backend whenever nvcc is found; ON requires it; OFF skips it.
set(TANDEM_HAS_CUDA OFF)
if(NOT TANDEM_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # sm_90a for Hopper-only instructions, plus sm_90 SASS and compute_90 PTX for forward compat.
    set(CMAKE_CUDA_ARCHITECTURES OFF)
    enable_language(CUDA)
    # CMake 3.25 knows no C++20 flag for nvcc; the .cu files and the headers they include keep to C++17.
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)
    set(TANDEM_CUDA_GENCODE
        "SHELL:-gencode arch=compute_90a,code=sm_90a"
        "SHELL:-gencode arch=compute_90,code=[sm_90,compute_90]")
    set(TANDEM_HAS_CUDA ON)
    message(STATUS "Tandem: CUDA backend ON (${CMAKE_CUDA_COMPILER_VERSION})")
  elseif(TANDEM_CUDA STREQUAL "ON")
    message(FATAL_ERROR "TANDEM_CUDA=ON but no CUDA compiler was found")
  else()
    message(STATUS "Tandem: CUDA backend OFF (nvcc not found)")
  endif()
endif()
