// Test runner for the pod cgroup tests (doctest): fake cgroup trees as plain directories, no root needed.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
