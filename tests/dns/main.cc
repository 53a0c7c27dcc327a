// Test runner for the DNS tests (doctest): HostResolver against a private dnsmasq.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
