# The upgrade test's second agent (tests/e2e/upgrade.sh): egressd built with
# EGRESSD_TEST_MAP_BUMP, which renames ports_v1 to ports_v2 as a layout change
# would. The same sources with their own BPF object; never installed.
set(BPF_BUMP_OUT ${CMAKE_BINARY_DIR}/bpf-test-bump)
add_custom_command(
  OUTPUT ${BPF_BUMP_OUT}/egressd.skel.h ${BPF_BUMP_OUT}/revoke.skel.h
  COMMAND ${CMAKE_COMMAND} -E env --unset=MAKEFLAGS
          make -s -f Makefile.bpf OUT=${BPF_BUMP_OUT} BPF_EXTRA=-DEGRESSD_TEST_MAP_BUMP
  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}
  DEPENDS ${BPF_SOURCES} ${CMAKE_SOURCE_DIR}/maps/egressd_abi.h ${CMAKE_SOURCE_DIR}/Makefile.bpf
  COMMENT "Building the upgrade test's BPF programs (ports_v2)")
add_custom_target(bpf_skeleton_test_bump DEPENDS ${BPF_BUMP_OUT}/egressd.skel.h)

get_target_property(EGRESSD_KERNEL_SOURCES egressd_kernel SOURCES)
get_target_property(EGRESSD_TELEMETRY_SOURCES egressd_telemetry SOURCES)
get_target_property(EGRESSD_AGENT_SOURCES egressd SOURCES)
add_executable(egressd-test-bump ${EGRESSD_AGENT_SOURCES} ${EGRESSD_KERNEL_SOURCES} ${EGRESSD_TELEMETRY_SOURCES})
add_dependencies(egressd-test-bump bpf_skeleton_test_bump)
target_compile_definitions(egressd-test-bump PRIVATE EGRESSD_TEST_MAP_BUMP)
target_include_directories(egressd-test-bump BEFORE PRIVATE ${BPF_BUMP_OUT})
target_link_libraries(egressd-test-bump PRIVATE egressd_core egressd_observe egressd_agent_state egressd_dns
                      egressd_k8s egressd_pod_cgroups PkgConfig::LIBBPF CLI11::CLI11)
set_target_properties(egressd-test-bump PROPERTIES UNITY_BUILD ${EGRESSD_UNITY_BUILD} UNITY_BUILD_BATCH_SIZE 0)

add_test(NAME e2e-upgrade COMMAND bash ${CMAKE_SOURCE_DIR}/tests/e2e/upgrade.sh ${CMAKE_BINARY_DIR}/bin)
set_tests_properties(e2e-upgrade PROPERTIES LABELS e2e RUN_SERIAL TRUE TIMEOUT 300)
