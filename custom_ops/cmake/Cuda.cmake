# CUDA kernels (custom_ops/cuda/) join the same library when a CUDA compiler is available.
# The CUDA runtime is linked statically, so the library loads on machines without CUDA; the
# CUDA kernels are registered only for CUDAExecutionProvider.
#
# cuSPARSELt (large-M sparse GEMMs) is loaded at run time with dlopen; only its header is needed
# to build. It is looked for in CUSPARSELT_INCLUDE_DIR, then in the Python environment's
# site-packages (the nvidia-cusparselt-cu13 wheel), then the wheel is downloaded once with pip into
# a cache and its include/ extracted. Without a header the library builds without the cuSPARSELt
# path (the own sparse kernels then serve every M).
set(CUSPARSELT_INCLUDE_DIR "" CACHE PATH "Directory holding cusparseLt.h (searched when empty)")

function(onnxsparse_find_cusparselt_header out_dir)
  set(${out_dir} "" PARENT_SCOPE)
  if(CUSPARSELT_INCLUDE_DIR AND EXISTS "${CUSPARSELT_INCLUDE_DIR}/cusparseLt.h")
    set(${out_dir} "${CUSPARSELT_INCLUDE_DIR}" PARENT_SCOPE)
    return()
  endif()
  set(subdirs nvidia/cusparselt/include nvidia/cu13/include)
  find_program(ONNXSPARSE_PYTHON NAMES python3 python)
  if(ONNXSPARSE_PYTHON)
    execute_process(
      COMMAND ${ONNXSPARSE_PYTHON} -c "import site, sys; print(';'.join(site.getsitepackages() + [site.getusersitepackages()] + sys.path))"
      OUTPUT_VARIABLE py_paths OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    foreach(p IN LISTS py_paths)
      foreach(s IN LISTS subdirs)
        if(p AND EXISTS "${p}/${s}/cusparseLt.h")
          set(${out_dir} "${p}/${s}" PARENT_SCOPE)
          return()
        endif()
      endforeach()
    endforeach()
  endif()
  # Download the wheel once into a cache and keep its headers only.
  if(DEFINED ENV{XDG_CACHE_HOME})
    set(cache "$ENV{XDG_CACHE_HOME}/onnxsparse/cusparselt")
  else()
    set(cache "$ENV{HOME}/.cache/onnxsparse/cusparselt")
  endif()
  foreach(s IN LISTS subdirs)
    if(EXISTS "${cache}/${s}/cusparseLt.h")
      set(${out_dir} "${cache}/${s}" PARENT_SCOPE)
      return()
    endif()
  endforeach()
  if(NOT ONNXSPARSE_PYTHON)
    return()
  endif()
  message(STATUS "onnxsparse: fetching the cuSPARSELt header (pip download nvidia-cusparselt-cu13)")
  set(dl "${cache}/download")
  file(MAKE_DIRECTORY "${dl}")
  execute_process(
    COMMAND ${ONNXSPARSE_PYTHON} -m pip download -q --no-deps --only-binary=:all: -d "${dl}" nvidia-cusparselt-cu13
    RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET TIMEOUT 600)
  file(GLOB wheels "${dl}/nvidia_cusparselt_cu13-*.whl")
  if(NOT rc EQUAL 0 OR NOT wheels)
    return()
  endif()
  list(GET wheels 0 wheel)
  # A wheel is a zip: extract it, keep include/ only, drop the (large) shared library.
  set(tmp "${cache}/extract")
  file(REMOVE_RECURSE "${tmp}")
  file(ARCHIVE_EXTRACT INPUT "${wheel}" DESTINATION "${tmp}" PATTERNS "*/include/*")
  foreach(s IN LISTS subdirs)
    if(EXISTS "${tmp}/${s}/cusparseLt.h")
      get_filename_component(parent "${cache}/${s}" DIRECTORY)
      file(MAKE_DIRECTORY "${parent}")
      file(COPY "${tmp}/${s}" DESTINATION "${parent}")
      set(${out_dir} "${cache}/${s}" PARENT_SCOPE)
    endif()
  endforeach()
  file(REMOVE_RECURSE "${tmp}" "${dl}")
endfunction()

# AUTO builds the CUDA kernels only where they can run: a CUDA compiler AND an NVIDIA driver
# (/dev/nvidiactl, /proc/driver/nvidia, or libcuda.so.1 on the loader's path, as in WSL). nvcc
# alone (a toolkit in a container without a GPU) would cost minutes of build for kernels that
# never run there; a build machine without a GPU that makes CUDA packages sets ON.
function(onnxsparse_gpu_driver_found out)
  set(${out} OFF PARENT_SCOPE)
  if(EXISTS "/dev/nvidiactl" OR EXISTS "/proc/driver/nvidia/version")
    set(${out} ON PARENT_SCOPE)
    return()
  endif()
  # libcuda.so.1 is the driver's; the toolkit's stubs/ directory holds only libcuda.so.
  find_library(libcuda NAMES libcuda.so.1 PATHS /usr/lib/wsl/lib NO_CACHE)
  if(libcuda)
    set(${out} ON PARENT_SCOPE)
  endif()
endfunction()

string(TOUPPER "${ONNXSPARSE_CUDA}" cuda_mode)
if(NOT cuda_mode MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "onnxsparse: ONNXSPARSE_CUDA='${ONNXSPARSE_CUDA}': use AUTO, ON or OFF")
endif()
set(ONNXSPARSE_CUDA "${cuda_mode}")
set(ONNXSPARSE_CUDA_SKIP_REASON "")
if(ONNXSPARSE_CUDA STREQUAL "AUTO")
  onnxsparse_gpu_driver_found(driver)
  if(NOT driver)
    find_program(nvcc_path NAMES nvcc PATHS "$ENV{CUDACXX}" /usr/local/cuda/bin NO_CACHE)
    if(DEFINED ENV{CUDACXX} OR nvcc_path)
      set(ONNXSPARSE_CUDA_SKIP_REASON
          "nvcc found but no NVIDIA driver (no /dev/nvidiactl, no libcuda.so.1): building the CPU kernels only; set ONNXSPARSE_CUDA=ON to build the CUDA kernels anyway (a build machine without a GPU)")
    else()
      set(ONNXSPARSE_CUDA_SKIP_REASON "no CUDA compiler found; building the CPU kernels only")
    endif()
  endif()
endif()

# Languages must be enabled at directory scope (enable_language inside a function loses CUDA's
# variables), so the compiler is looked for when this file is included.
set(ONNXSPARSE_CUDA_READY OFF)
if(NOT ONNXSPARSE_CUDA STREQUAL "OFF" AND NOT ONNXSPARSE_CUDA_SKIP_REASON)
  # cuda/ (ops, runner), cuda/sparse_gemm/ (one translation unit per kernel family and element type,
  # compiled in parallel), cuda/cusparselt/ (loader, tuning cache, plans).
  file(GLOB ONNXSPARSE_CUDA_SOURCES CONFIGURE_DEPENDS
       ${PROJECT_SOURCE_DIR}/cuda/*.cu ${PROJECT_SOURCE_DIR}/cuda/*.cc
       ${PROJECT_SOURCE_DIR}/cuda/sparse_gemm/*.cu ${PROJECT_SOURCE_DIR}/cuda/sparse_gemm/*.cc
       ${PROJECT_SOURCE_DIR}/cuda/cusparselt/*.cc)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER AND ONNXSPARSE_CUDA_SOURCES)
    # The architectures come from ONNXSPARSE_CUDA_ARCHS, written as -gencode below; no
    # architecture flags of CMake's own.
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES OFF)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(ONNXSPARSE_CUDA_READY ON)
  endif()
endif()

function(onnxsparse_add_cuda target)
  if(ONNXSPARSE_CUDA STREQUAL "OFF")
    message(STATUS "onnxsparse: CUDA kernels disabled (ONNXSPARSE_CUDA=OFF)")
    return()
  endif()
  if(ONNXSPARSE_CUDA_SKIP_REASON)
    message(STATUS "onnxsparse: ${ONNXSPARSE_CUDA_SKIP_REASON}")
    return()
  endif()
  if(NOT CMAKE_CUDA_COMPILER)
    if(ONNXSPARSE_CUDA STREQUAL "ON")
      message(FATAL_ERROR "ONNXSPARSE_CUDA=ON but no CUDA compiler was found")
    endif()
    message(STATUS "onnxsparse: no CUDA compiler found; building the CPU kernels only")
    return()
  endif()
  if(NOT ONNXSPARSE_CUDA_READY)
    message(STATUS "onnxsparse: no CUDA sources yet")
    return()
  endif()
  onnxsparse_cuda_gencode(gencode archs_text)
  set(ONNXSPARSE_NVCC_THREADS "2" CACHE STRING
      "nvcc --threads: architectures of one file compiled in parallel (0: one per core)")
  set_property(TARGET ${target} PROPERTY CUDA_ARCHITECTURES OFF)
  target_sources(${target} PRIVATE ${ONNXSPARSE_CUDA_SOURCES})
  target_compile_definitions(${target} PRIVATE ONNXSPARSE_WITH_CUDA=1)
  target_include_directories(${target} PRIVATE ${CUDAToolkit_INCLUDE_DIRS})
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:${gencode} --threads ${ONNXSPARSE_NVCC_THREADS} --Werror default-stream-launch -Werror all-warnings -Xcompiler=-Wall -lineinfo --expt-relaxed-constexpr>)
  target_link_libraries(${target} PRIVATE CUDA::cudart_static)

  # ONNXSPARSE_CUSPARSELT=OFF builds without the cuSPARSELt path even where its header could be found
  # (CI builds that way too, so that the build without the header keeps compiling and linking).
  set(ONNXSPARSE_CUSPARSELT ON CACHE BOOL "the cuSPARSELt path (its header found or fetched at configure time)")
  set(cusparselt_dir "")
  if(ONNXSPARSE_CUSPARSELT)
    onnxsparse_find_cusparselt_header(cusparselt_dir)
  endif()
  if(cusparselt_dir)
    target_include_directories(${target} PRIVATE ${cusparselt_dir})
    target_compile_definitions(${target} PRIVATE ONNXSPARSE_WITH_CUSPARSELT=1)
    set(have_cusparse OFF)
    foreach(d IN LISTS CUDAToolkit_INCLUDE_DIRS)
      if(EXISTS "${d}/cusparse.h")
        set(have_cusparse ON)
      endif()
    endforeach()
    if(NOT have_cusparse)
      # cuSPARSELt 0.8's header includes cusparse.h for three enumerations.
      target_include_directories(${target} PRIVATE ${PROJECT_SOURCE_DIR}/cuda/cusparse_stub)
    endif()
    message(STATUS "onnxsparse: cuSPARSELt header in ${cusparselt_dir} (library loaded at run time)")
  elseif(NOT ONNXSPARSE_CUSPARSELT)
    message(STATUS "onnxsparse: building the CUDA kernels without the cuSPARSELt path (ONNXSPARSE_CUSPARSELT=OFF)")
  else()
    message(WARNING "onnxsparse: no cuSPARSELt header found; building the CUDA kernels without the "
                    "cuSPARSELt path (set CUSPARSELT_INCLUDE_DIR)")
  endif()
  # What is built, for which GPUs: at configure time and again after each link of the library.
  set(families "")
  foreach(src IN LISTS ONNXSPARSE_CUDA_SOURCES)
    if(src MATCHES "/sparse_gemm/([a-z0-9_]+)\\.cu$")
      list(APPEND families "${CMAKE_MATCH_1}")
    endif()
  endforeach()
  list(JOIN families ", " families_text)
  set(summary "onnxsparse CUDA kernels: ${families_text}; ${archs_text}; nvcc --threads ${ONNXSPARSE_NVCC_THREADS}")
  message(STATUS "${summary}")
  add_custom_command(TARGET ${target} POST_BUILD COMMAND ${CMAKE_COMMAND} -E echo "-- ${summary}" VERBATIM)
endfunction()

# ONNXSPARSE_CUDA_ARCHS: the GPUs to build machine code (SASS) for, as nvcc spells them without
# sm_ (e.g. "80;90a"), or "all": every GPU with sparse tensor cores that this nvcc knows (80, 86,
# 89, 90a, and 100, 120 where listed). ONNXSPARSE_CUDA_PTX: the virtual architecture whose PTX is
# embedded too, for GPUs newer than every SASS (the driver compiles it at load time); empty: none.
#
# What each architecture gets: every kernel needs sm_80 (mma.sync, mma.sp with ordered metadata,
# cp.async, ldmatrix). From sm_90 on, the cp.async kernels are also launched as programmatic
# dependents (griddepcontrol; compiled out below sm_90, and the launch then asks for no PDL).
# sm_80 SASS also runs on sm_86 and sm_89 (same major version); 90a is Hopper's, which the default
# needs for nothing Hopper-only beyond PDL but keeps what was measured on the H200.
#
# The default, "80;90a" with PTX of compute_90, serves Ampere, Ada and Hopper natively and newer
# GPUs through the PTX; each SASS architecture adds about the time of one more build of the
# kernels, so a developer on one GPU may set only theirs (e.g. -DONNXSPARSE_CUDA_ARCHS=90a
# -DONNXSPARSE_CUDA_PTX=). -DONNXSPARSE_CUDA_ARCHS= -DONNXSPARSE_CUDA_PTX=80 builds only compute_80
# PTX, which the driver compiles at load time: the Ampere path, testable on a Hopper GPU.
set(ONNXSPARSE_CUDA_ARCHS "80;90a" CACHE STRING "CUDA architectures to build SASS for (e.g. 80;90a, or all)")
set(ONNXSPARSE_CUDA_PTX "90" CACHE STRING "virtual architecture whose PTX is embedded (empty: none)")

function(onnxsparse_cuda_gencode out_flags out_text)
  set(archs "${ONNXSPARSE_CUDA_ARCHS}")
  if(archs STREQUAL "all")
    set(archs 80 86 89 90a)
    execute_process(COMMAND ${CMAKE_CUDA_COMPILER} --list-gpu-code OUTPUT_VARIABLE known ERROR_QUIET)
    foreach(extra 100 120)
      if(known MATCHES "sm_${extra}")
        list(APPEND archs ${extra})
      endif()
    endforeach()
  endif()
  set(flags "")
  foreach(arch IN LISTS archs)
    if(NOT arch MATCHES "^[0-9]+[af]?$")
      message(FATAL_ERROR "ONNXSPARSE_CUDA_ARCHS: '${arch}' is not an architecture such as 80 or 90a")
    endif()
    string(REGEX MATCH "^[0-9]+" number "${arch}")
    if(number LESS 80)
      message(FATAL_ERROR "ONNXSPARSE_CUDA_ARCHS: sm_${arch} has no sparse tensor cores (the kernels need sm_80 or newer)")
    endif()
    list(APPEND flags "-gencode=arch=compute_${arch},code=sm_${arch}")
  endforeach()
  if(ONNXSPARSE_CUDA_PTX)
    list(APPEND flags "-gencode=arch=compute_${ONNXSPARSE_CUDA_PTX},code=compute_${ONNXSPARSE_CUDA_PTX}")
  endif()
  if(NOT flags)
    message(FATAL_ERROR "ONNXSPARSE_CUDA_ARCHS and ONNXSPARSE_CUDA_PTX are both empty")
  endif()
  if(archs)
    list(JOIN archs ", sm_" sass)
    set(text "SASS for sm_${sass}")
  else()
    set(text "no SASS")
  endif()
  if(ONNXSPARSE_CUDA_PTX)
    string(APPEND text ", PTX for compute_${ONNXSPARSE_CUDA_PTX}")
  endif()
  set(${out_flags} "${flags}" PARENT_SCOPE)
  set(${out_text} "${text}" PARENT_SCOPE)
endfunction()

# The cuSPARSELt tuning cache is plain C++: a small front end of it is built with every library,
# CUDA or not, so that its file format is tested without a GPU (tests/test_cusparselt_tuning_cache.py).
add_executable(onnxsparse_tuning_cache_check
  ${PROJECT_SOURCE_DIR}/cuda/cusparselt/tuning_cache.cc ${PROJECT_SOURCE_DIR}/cuda/cusparselt/tuning_cache_check.cc)
target_include_directories(onnxsparse_tuning_cache_check PRIVATE ${PROJECT_SOURCE_DIR})
target_compile_options(onnxsparse_tuning_cache_check PRIVATE -Wall -Wextra)
