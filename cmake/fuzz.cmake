# ---- fuzzing: libFuzzer targets of tests/fuzz (scripts/fuzz) ---------------
# Included by CMakeLists.txt when EGRESSD_FUZZ is ON, in a build tree of its
# own (build-fuzz/, clang only). Every C++ file of the tree is compiled with
# the fuzzer's coverage and ASan/UBSan; only the fuzz targets are built, each
# from the few library sources it needs. tests/fuzz/README.md has the targets.
if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  message(FATAL_ERROR "EGRESSD_FUZZ needs clang++ (libFuzzer): -DCMAKE_CXX_COMPILER=clang++")
endif()

# CMAKE_CXX_FLAGS as it stands at the end of the directory applies to every
# target of it, the libraries defined before this file included.
string(APPEND CMAKE_CXX_FLAGS
       " -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
       # CMakeLists.txt's -Wno-subobject-linkage is GCC's.
       " -Wno-unknown-warning-option")
# Build type "Fuzz" (scripts/fuzz): optimised enough to fuzz fast, with line
# numbers in reports. project() made an empty cache entry for it: shadowed.
set(CMAKE_CXX_FLAGS_FUZZ "-O1 -gline-tables-only")

add_custom_target(fuzz_targets)

# egressd_fuzz_target(NAME SOURCES... [LIBS libs...]): tests/fuzz/NAME.cc plus
# the library sources named, linked with egressd_core and the libraries named.
function(egressd_fuzz_target name)
  cmake_parse_arguments(PARSE_ARGV 1 FUZZ "" "" "SOURCES;LIBS")
  add_executable(fuzz_${name} tests/fuzz/${name}.cc ${FUZZ_SOURCES})
  target_include_directories(fuzz_${name} PRIVATE userspace tests/fuzz)
  target_link_libraries(fuzz_${name} PRIVATE egressd_core ${FUZZ_LIBS})
  target_link_options(fuzz_${name} PRIVATE -fsanitize=fuzzer)
  set_target_properties(fuzz_${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz)
  add_dependencies(fuzz_targets fuzz_${name})
endfunction()

egressd_fuzz_target(meshconfig)
egressd_fuzz_target(egress_policy)
egressd_fuzz_target(agent_config)
egressd_fuzz_target(workloads)
egressd_fuzz_target(yaml_edit)
egressd_fuzz_target(dns_response)
egressd_fuzz_target(dns_host_name)
egressd_fuzz_target(k8s_watch SOURCES userspace/k8s/line_framer.cc)
# The /events query: cpp-httplib's query-string decoder, then EventQuery.
egressd_fuzz_target(http_query SOURCES userspace/agent/event_buffer.cc LIBS PkgConfig::HTTPLIB)
# egressctl: settings, then what it derives from them and the status file.
# MapSet (common.cc opens the pinned maps) needs the kernel library to link.
egressd_fuzz_target(cli_config SOURCES userspace/cli/common.cc userspace/cli/agent_http.cc
                    LIBS egressd_agent_state egressd_kernel PkgConfig::HTTPLIB Threads::Threads)
