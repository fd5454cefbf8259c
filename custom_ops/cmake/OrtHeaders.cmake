# Finds ONNX Runtime's C/C++ headers (onnxruntime's pip wheels ship none), in this order:
#   1. ORT_INCLUDE_DIR (CMake option or environment variable), which must hold onnxruntime_c_api.h;
#   2. what the system has (/usr/include/onnxruntime, /usr/local/include/onnxruntime, CMAKE_PREFIX_PATH);
#   3. Debian's libonnxruntime-dev package (ONNX Runtime 1.21, ORT_API_VERSION 21), downloaded once
#      into a user cache by CMake itself and accepted only when its SHA-256 equals the one pinned
#      below. No apt, no dpkg, no package metadata: this works on any Linux that reaches a Debian
#      mirror, and a download that fails or does not match stops the build with one line.
#
# The pinned hash is the one that trixie's main/binary-amd64/Packages index gives for this file;
# that index was checked against trixie's InRelease, whose signature gpgv verified with the Debian
# archive keyring ("Debian Stable Release Key (13/trixie)"). The headers are the same for every
# architecture, so the amd64 package serves all of them.
#
# Also a script: cmake -DDEST=<dir> -P OrtHeaders.cmake fetches the headers into <dir>.
set(ONNXSPARSE_ORT_VERSION "1.21.0")
set(ONNXSPARSE_ORT_DEB "pool/main/o/onnxruntime/libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb")
set(ONNXSPARSE_ORT_DEB_SHA256 "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08")

# Downloads, checks and unpacks the package's usr/include/onnxruntime into dest. On failure sets
# error_var to one line saying what went wrong (empty on success).
function(onnxsparse_fetch_ort_headers dest error_var)
  set(${error_var} "" PARENT_SCOPE)
  if(EXISTS "${dest}/onnxruntime_c_api.h")
    return()
  endif()
  # ONNXSPARSE_DEBIAN_MIRROR: another mirror of the Debian archive (the hash is checked all the same).
  if(DEFINED ENV{ONNXSPARSE_DEBIAN_MIRROR} AND NOT "$ENV{ONNXSPARSE_DEBIAN_MIRROR}" STREQUAL "")
    set(mirrors "$ENV{ONNXSPARSE_DEBIAN_MIRROR}")
  else()
    # archive.debian.org keeps the file once trixie has left the mirrors.
    set(mirrors "https://deb.debian.org/debian" "http://deb.debian.org/debian"
                "https://archive.debian.org/debian")
  endif()
  get_filename_component(parent "${dest}" DIRECTORY)
  file(MAKE_DIRECTORY "${parent}")
  # Two builds fetching at once (two venvs, two build dirs) take turns.
  file(LOCK "${parent}/.fetch.lock" GUARD FUNCTION TIMEOUT 600 RESULT_VARIABLE lock_rc)
  if(EXISTS "${dest}/onnxruntime_c_api.h")
    return()
  endif()
  string(RANDOM LENGTH 8 tag)
  set(work "${parent}/.fetch-${tag}")
  file(REMOVE_RECURSE "${work}")
  get_filename_component(deb_name "${ONNXSPARSE_ORT_DEB}" NAME)
  set(deb "${work}/${deb_name}")
  set(tried "")
  set(reason "")
  set(ok OFF)
  foreach(mirror IN LISTS mirrors)
    string(REGEX REPLACE "/+$" "" mirror "${mirror}")
    set(url "${mirror}/${ONNXSPARSE_ORT_DEB}")
    message(STATUS "onnxsparse: downloading ONNX Runtime ${ONNXSPARSE_ORT_VERSION} headers: ${url}")
    file(DOWNLOAD "${url}" "${deb}" STATUS status TIMEOUT 180 INACTIVITY_TIMEOUT 30)
    list(GET status 0 code)
    list(GET status 1 text)
    list(APPEND tried "${mirror}")
    if(NOT code EQUAL 0)
      set(reason "${text}")
      continue()
    endif()
    file(SHA256 "${deb}" got)
    if(NOT got STREQUAL ONNXSPARSE_ORT_DEB_SHA256)
      set(reason "SHA-256 ${got} is not the pinned ${ONNXSPARSE_ORT_DEB_SHA256}")
      continue()
    endif()
    set(ok ON)
    break()
  endforeach()
  if(NOT ok)
    file(REMOVE_RECURSE "${work}")
    list(JOIN tried ", " joined)
    set(${error_var} "could not download ${deb_name} (ONNX Runtime's headers) from ${joined}: ${reason}" PARENT_SCOPE)
    return()
  endif()
  # A .deb is an ar archive holding data.tar.*; CMake's libarchive reads both.
  file(ARCHIVE_EXTRACT INPUT "${deb}" DESTINATION "${work}/deb")
  file(GLOB data "${work}/deb/data.tar*")
  if(data)
    file(ARCHIVE_EXTRACT INPUT "${data}" DESTINATION "${work}/data")
  endif()
  set(include "${work}/data/usr/include/onnxruntime")
  if(NOT EXISTS "${include}/onnxruntime_c_api.h")
    file(REMOVE_RECURSE "${work}")
    set(${error_var} "${deb_name} holds no usr/include/onnxruntime/onnxruntime_c_api.h" PARENT_SCOPE)
    return()
  endif()
  file(REMOVE_RECURSE "${dest}")
  file(RENAME "${include}" "${dest}")
  file(REMOVE_RECURSE "${work}")
  message(STATUS "onnxsparse: ONNX Runtime ${ONNXSPARSE_ORT_VERSION} headers (SHA-256 checked) in ${dest}")
endfunction()

# What a build without headers says, as one line (a leading space keeps CMake from wrapping it).
set(ONNXSPARSE_ORT_HINT "set ORT_INCLUDE_DIR=<a directory holding onnxruntime_c_api.h of ONNX Runtime >= 1.21> (in the environment, or -DORT_INCLUDE_DIR= for cmake)")

function(onnxsparse_find_ort_headers out_var)
  set(explicit "${ORT_INCLUDE_DIR}")
  if(NOT explicit AND DEFINED ENV{ORT_INCLUDE_DIR})
    set(explicit "$ENV{ORT_INCLUDE_DIR}")
  endif()
  if(explicit)
    if(NOT EXISTS "${explicit}/onnxruntime_c_api.h")
      message(FATAL_ERROR " onnxsparse: ORT_INCLUDE_DIR=${explicit} holds no onnxruntime_c_api.h; ${ONNXSPARSE_ORT_HINT}")
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

  if(DEFINED ENV{XDG_CACHE_HOME} AND NOT "$ENV{XDG_CACHE_HOME}" STREQUAL "")
    set(cache_root "$ENV{XDG_CACHE_HOME}")
  elseif(DEFINED ENV{HOME} AND NOT "$ENV{HOME}" STREQUAL "")
    set(cache_root "$ENV{HOME}/.cache")
  else()
    set(cache_root "${CMAKE_BINARY_DIR}")
  endif()
  set(fetched "${cache_root}/onnxsparse/onnxruntime-${ONNXSPARSE_ORT_VERSION}-include")
  onnxsparse_fetch_ort_headers("${fetched}" error)
  if(error)
    message(FATAL_ERROR " onnxsparse: ${error}; ${ONNXSPARSE_ORT_HINT}")
  endif()
  set(${out_var} "${fetched}" PARENT_SCOPE)
endfunction()

if(CMAKE_SCRIPT_MODE_FILE STREQUAL CMAKE_CURRENT_LIST_FILE)
  if(NOT DEST)
    message(FATAL_ERROR "usage: cmake -DDEST=<dir> -P OrtHeaders.cmake")
  endif()
  onnxsparse_fetch_ort_headers("${DEST}" error)
  if(error)
    message(FATAL_ERROR " onnxsparse: ${error}")
  endif()
endif()
