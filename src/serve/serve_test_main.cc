// serve_test's main: the tests, or one of their client processes' programs
// (serve_test_util.h, Child).
#include "serve/serve_test_util.h"

int main(int argc, char** argv) { return poise::serve::child_or_tests_main(argc, argv); }
