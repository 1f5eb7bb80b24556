#include <gtest/gtest.h>
#include <cstring>
#include "fs/test_util.h"
namespace poise::testing {
namespace {
TEST(MappingSmoke, Compiles) { SUCCEED(); }
}
}
