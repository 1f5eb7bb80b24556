// The poise command-line front end. It uses only the public API in
// include/poise/. Each command opens the image, mounts it (read-only for
// commands that only look), does one thing, and unmounts.
//
// Exit codes are part of the interface (tooling calls poise): see exit_codes.h.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <memory>
#include <string>

#include "poise/filesystem.h"

namespace poise::cli {

// Registers the commands on the app; each sets `run` when chosen.
void add_inspect_commands(CLI::App& app, std::function<int()>* run);
void add_modify_commands(CLI::App& app, std::function<int()>* run);
void add_demo_command(CLI::App& app, std::function<int()>* run);
void add_failure_commands(CLI::App& app, std::function<int()>* run);

// An image opened and mounted for one command.
struct Session {
  std::unique_ptr<Device> device;
  std::unique_ptr<Filesystem> fs;
};

// Opens and mounts IMAGE; on failure prints the error and returns its exit code.
int open_session(const std::string& image, MountMode mode, Session* out);
// Unmounts (writing the checkpoint); returns the exit code.
int close_session(Session& session);
// Prints "poise: <context>: <message>" and returns the exit code for the error.
int report(const std::string& context, const Error& error);

}  // namespace poise::cli
