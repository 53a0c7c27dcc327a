# ---- Kubernetes: a pod's cgroup v2 directory, and waiting for it ------------
# Included by CMakeLists.txt after the core libraries. Pure file-system code
# (no libbpf): the agent's Kubernetes mode calls it to find where to attach.
add_library(egressd_pod_cgroups STATIC userspace/k8s/pod_cgroup.cc userspace/k8s/cgroup_waiter.cc)
target_link_libraries(egressd_pod_cgroups PUBLIC egressd_core)

# Fake cgroup trees in temporary directories: no root, no real cgroup.
file(GLOB POD_CGROUP_TEST_SOURCES CONFIGURE_DEPENDS tests/k8s/pod_cgroup/*.cc)
add_executable(pod_cgroup_tests ${POD_CGROUP_TEST_SOURCES})
target_link_libraries(pod_cgroup_tests PRIVATE egressd_pod_cgroups doctest::doctest)
target_compile_options(pod_cgroup_tests PRIVATE -O0 -g0)
add_test(NAME pod-cgroups COMMAND pod_cgroup_tests)
set_tests_properties(pod-cgroups PROPERTIES LABELS unit TIMEOUT 60)

set_target_properties(egressd_pod_cgroups pod_cgroup_tests
                      PROPERTIES UNITY_BUILD ${EGRESSD_UNITY_BUILD} UNITY_BUILD_BATCH_SIZE 0)
set_source_files_properties(tests/k8s/pod_cgroup/main.cc PROPERTIES SKIP_UNITY_BUILD_INCLUSION ON)
