// Test runner for the Kubernetes API client (doctest): unit tests, and the
// test suite "apiserver" against tests/k8s/fake_apiserver.py.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
