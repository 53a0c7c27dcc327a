# ---- Kubernetes API client: config, HTTPS (libcurl), reflectors -------------
pkg_check_modules(CURL REQUIRED IMPORTED_TARGET libcurl)
add_library(egressd_k8s STATIC
  userspace/k8s/cluster_config.cc
  userspace/k8s/http_client.cc
  userspace/k8s/line_framer.cc
  userspace/k8s/discovery.cc
  userspace/k8s/reflector.cc)
target_link_libraries(egressd_k8s PUBLIC egressd_core Threads::Threads nlohmann_json::nlohmann_json
                      PRIVATE PkgConfig::CURL)

# Unit tests (label unit) and tests against tests/k8s/fake_apiserver.py
# (test suite "apiserver", label k8s) in one binary.
file(GLOB K8S_CLIENT_TEST_SOURCES CONFIGURE_DEPENDS tests/k8s/client/*.cc)
add_executable(k8s_client_tests ${K8S_CLIENT_TEST_SOURCES})
target_link_libraries(k8s_client_tests PRIVATE egressd_k8s doctest::doctest PkgConfig::CURL)
target_compile_definitions(k8s_client_tests PRIVATE EGRESSD_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
target_compile_options(k8s_client_tests PRIVATE -O0 -g0)
set_target_properties(egressd_k8s k8s_client_tests
                      PROPERTIES UNITY_BUILD ${EGRESSD_UNITY_BUILD} UNITY_BUILD_BATCH_SIZE 0)
set_source_files_properties(tests/k8s/client/main.cc PROPERTIES SKIP_UNITY_BUILD_INCLUSION ON)
add_test(NAME k8s-client COMMAND k8s_client_tests --test-suite-exclude=apiserver)
set_tests_properties(k8s-client PROPERTIES LABELS unit TIMEOUT 60)
add_test(NAME k8s-client-apiserver COMMAND k8s_client_tests --test-suite=apiserver)
set_tests_properties(k8s-client-apiserver PROPERTIES LABELS k8s TIMEOUT 300)
