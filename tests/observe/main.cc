// Test runner for the observability tests (doctest): the HTTP server on loopback.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
