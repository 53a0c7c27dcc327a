# Fake Kubernetes API server (tests/k8s/fake_apiserver.py, Python 3 standard
# library only) and its test: the real kubectl and raw wire-protocol checks
# against it. No root and no network beyond 127.0.0.1; exit 77 = skipped
# (python3, openssl, kubectl or curl missing).
add_test(NAME k8s-fake
         COMMAND bash ${CMAKE_SOURCE_DIR}/tests/k8s/test_fake_apiserver.sh)
set_tests_properties(k8s-fake PROPERTIES LABELS k8s TIMEOUT 120 SKIP_RETURN_CODE 77)
