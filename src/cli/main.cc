// poise: the command-line tool. See `poise --help` and the README.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "cli/cli.h"
#include "cli/exit_codes.h"

int main(int argc, char** argv) {
  using namespace poise::cli;
  CLI::App app{"poise: a DAX filesystem for persistent and CXL memory, on a device or an emulated image file"};
  app.require_subcommand(1);
  app.footer(exit_code_table());
  std::function<int()> run;
  add_modify_commands(app, &run);
  add_inspect_commands(app, &run);
  add_failure_commands(app, &run);
  add_demo_command(app, &run);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);
    return kExitUsage;
  }
  return run ? run() : kExitUsage;
}
