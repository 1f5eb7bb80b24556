#include "device/read_section.h"

#include <urcu/urcu-bp.h>

#if defined(__SANITIZE_THREAD__)
extern "C" void AnnotateHappensBefore(const char* file, int line, const volatile void* addr);
extern "C" void AnnotateHappensAfter(const char* file, int line, const volatile void* addr);
#define POISE_HAPPENS_BEFORE(addr) AnnotateHappensBefore(__FILE__, __LINE__, addr)
#define POISE_HAPPENS_AFTER(addr) AnnotateHappensAfter(__FILE__, __LINE__, addr)
#else
#define POISE_HAPPENS_BEFORE(addr) ((void)(addr))
#define POISE_HAPPENS_AFTER(addr) ((void)(addr))
#endif

namespace poise {

namespace {
char grace_period_tag;
}  // namespace

ReadSection::ReadSection() { urcu_bp_read_lock(); }

ReadSection::~ReadSection() {
  POISE_HAPPENS_BEFORE(&grace_period_tag);
  urcu_bp_read_unlock();
}

void ReadSection::wait_for_readers() {
  urcu_bp_synchronize_rcu();
  POISE_HAPPENS_AFTER(&grace_period_tag);
}

}  // namespace poise
