# Finds ONNX Runtime's C/C++ headers, in this order:
#   1. ORT_INCLUDE_DIR (CMake option or environment variable), which must hold onnxruntime_c_api.h;
#   2. what the system has (/usr/include/onnxruntime, /usr/local/include/onnxruntime, CMAKE_PREFIX_PATH);
#   3. Debian's libonnxruntime-dev, fetched once into a user cache by fetch_ort_headers.sh
#      (a private apt state; the system's sources and packages are left alone).
function(onnxsparse_find_ort_headers out_var)
  set(explicit "${ORT_INCLUDE_DIR}")
  if(NOT explicit AND DEFINED ENV{ORT_INCLUDE_DIR})
    set(explicit "$ENV{ORT_INCLUDE_DIR}")
  endif()
  if(explicit)
    if(NOT EXISTS "${explicit}/onnxruntime_c_api.h")
      message(FATAL_ERROR "ORT_INCLUDE_DIR=${explicit} does not contain onnxruntime_c_api.h")
    endif()
    set(${out_var} "${explicit}" PARENT_SCOPE)
    return()
  endif()

  find_path(ORT_SYSTEM_INCLUDE onnxruntime_c_api.h
            PATH_SUFFIXES onnxruntime onnxruntime/core/session
            PATHS /usr/include /usr/local/include)
  if(ORT_SYSTEM_INCLUDE AND EXISTS "${ORT_SYSTEM_INCLUDE}/onnxruntime_lite_custom_op.h")
    set(${out_var} "${ORT_SYSTEM_INCLUDE}" PARENT_SCOPE)
    return()
  endif()

  if(DEFINED ENV{XDG_CACHE_HOME})
    set(cache_root "$ENV{XDG_CACHE_HOME}")
  else()
    set(cache_root "$ENV{HOME}/.cache")
  endif()
  set(fetched "${cache_root}/onnxsparse/ort-include")
  if(NOT EXISTS "${fetched}/onnxruntime_c_api.h")
    message(STATUS "onnxsparse: fetching ONNX Runtime headers from Debian's libonnxruntime-dev")
    execute_process(
      COMMAND bash "${CMAKE_CURRENT_FUNCTION_LIST_DIR}/fetch_ort_headers.sh" "${fetched}"
      RESULT_VARIABLE rc)
    if(NOT rc EQUAL 0 OR NOT EXISTS "${fetched}/onnxruntime_c_api.h")
      message(FATAL_ERROR "Could not find or fetch ONNX Runtime headers; pass -DORT_INCLUDE_DIR=<dir> "
                          "(or set the ORT_INCLUDE_DIR environment variable)")
    endif()
  endif()
  set(${out_var} "${fetched}" PARENT_SCOPE)
endfunction()
