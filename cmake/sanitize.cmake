# ---- the sanitizer build (scripts/sanitize) ---------------------------------
# Read at the end of project() (CMAKE_PROJECT_INCLUDE) in build-asan/ only:
# AddressSanitizer and UndefinedBehaviorSanitizer on every C++ file, and
# what the tests need to run under them. g++, the project's compiler: clang 14
# cannot build the unit tests (tests/fuzz/README.md says why).
string(APPEND CMAKE_CXX_FLAGS " -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer")
# Build type "Sanitize": -Og builds in half the time -O1 takes with the
# sanitizers (the stage's main cost) and runs fast enough for the end-to-end
# test's 100 ms checks; -g1 gives the reports' stacks their lines.
set(CMAKE_CXX_FLAGS_SANITIZE "-Og -g1")

