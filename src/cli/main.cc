// poise: the command-line tool. See `poise --help` and the README.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>

#include "cli/cli.h"
#include "cli/exit_codes.h"

namespace {

// A caller may start poise with standard input, output or error closed. The
// next file opened would then take that number, and the output meant for the
// terminal would land in it — in the image. Each closed one is opened before
// anything else is: input and error on /dev/null, output on /dev/full, so that
// output written to a closed stream fails as a write to it would (as GNU cat
// does), instead of vanishing with exit 0.
bool open_standard_streams() {
  for (int fd = STDIN_FILENO; fd <= STDERR_FILENO; ++fd) {
    if (::fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    if (fd == STDIN_FILENO) poise::cli::stdin_was_closed = true;
    if (fd == STDOUT_FILENO) poise::cli::stdout_was_closed = true;
    int opened = ::open(fd == STDOUT_FILENO ? "/dev/full" : "/dev/null", fd == STDIN_FILENO ? O_RDONLY : O_WRONLY);
    if (opened < 0 && fd == STDOUT_FILENO) opened = ::open("/dev/null", O_WRONLY);
    if (opened != fd) return false;  // the lowest free number is fd, unless /dev/null is missing
  }
  return true;
}

// Output that could not be written is an error, never a silent success: the
// last buffered bytes are flushed here, and any earlier failure is remembered
// by the stream.
int finish_output(int code) {
  if (std::fflush(stdout) == 0 && !std::ferror(stdout)) return code;
  int e = errno;
  if (!poise::cli::output_error_reported) {
    std::fprintf(stderr, "poise: cannot write the output: %s\n",
                 poise::cli::stdout_was_closed ? "standard output is closed" : std::strerror(e != 0 ? e : EIO));
  }
  return code != poise::cli::kExitOk ? code : poise::cli::kExitFailure;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace poise::cli;
  if (!open_standard_streams()) return kExitFailure;
  // A reader that went away (`poise cat ... | head`) is a write error with a
  // message and exit 1, not a silent death by SIGPIPE.
  ::signal(SIGPIPE, SIG_IGN);
  CLI::App app{"poise: a DAX filesystem for persistent and CXL memory, on a device or an emulated image file"};
  app.require_subcommand(1);
  app.footer(exit_code_table());
  app.add_option("--socket", socket_option,
                 "Use the poise server on this socket for IMAGE (default: IMAGE.sock when a server answers there)")
      ->check(kNonEmptyValue);
  app.fallthrough();  // --socket may also follow the command's name
  std::function<int()> run;
  add_serve_command(app, &run);
  add_mount_commands(app, &run);
  add_modify_commands(app, &run);
  add_put_command(app, &run);
  add_inspect_commands(app, &run);
  add_xattr_command(app, &run);
  add_failure_commands(app, &run);
  add_demo_command(app, &run);
  try {
    try {
      app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
      return finish_output(app.exit(e));
    } catch (const CLI::CallForAllHelp& e) {
      return finish_output(app.exit(e));
    } catch (const CLI::ParseError& e) {
      app.exit(e);
      return kExitUsage;
    }
    return finish_output(run ? run() : kExitUsage);
  } catch (const std::system_error& e) {
    // fmt reports a failed write to stdout by throwing; the filesystem was
    // unmounted by the destructors on the way here.
    // stderr itself may be what failed: plain stdio, which cannot throw.
    std::fprintf(stderr, "poise: cannot write the output: %s\n", e.what());
    return kExitFailure;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "poise: internal error: %s\n", e.what());
    return kExitFailure;
  }
}
