#include "base/signal_chain.h"

#include <unistd.h>

namespace poise {

bool call_previous(const struct sigaction& prev, int sig, siginfo_t* info, void* context) {
  if ((prev.sa_flags & SA_SIGINFO) != 0 && prev.sa_sigaction != nullptr) {
    prev.sa_sigaction(sig, info, context);
    return true;
  }
  if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN && prev.sa_handler != nullptr) {
    prev.sa_handler(sig);
    return true;
  }
  return false;
}

void die_of(int sig) {
  ::signal(sig, SIG_DFL);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, sig);
  ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  ::raise(sig);
  ::_exit(128 + sig);
}

void pass_on(const struct sigaction& prev, int sig, siginfo_t* info, void* context) {
  if (call_previous(prev, sig, info, context)) return;
  if (prev.sa_handler == SIG_IGN && sig == SIGBUS && info->si_code == BUS_MCEERR_AO) return;
  die_of(sig);
}

}  // namespace poise
