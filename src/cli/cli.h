// The poise command-line front end. It uses only the public API in
// include/poise/. Each command opens the image, mounts it (read-only for
// commands that only look), does one thing, and unmounts.
//
// Exit codes are part of the interface (tooling calls poise): see exit_codes.h.
#pragma once

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdio>

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "poise/client.h"
#include "poise/filesystem.h"

namespace poise::cli {

// Registers the commands on the app; each sets `run` when chosen.
void add_inspect_commands(CLI::App& app, std::function<int()>* run);
void add_modify_commands(CLI::App& app, std::function<int()>* run);
void add_demo_command(CLI::App& app, std::function<int()>* run);
void add_put_command(CLI::App& app, std::function<int()>* run);
void add_failure_commands(CLI::App& app, std::function<int()>* run);
void add_serve_command(CLI::App& app, std::function<int()>* run);
void add_mount_commands(CLI::App& app, std::function<int()>* run);
void add_xattr_command(CLI::App& app, std::function<int()>* run);

// `poise --socket PATH`: the server to use for IMAGE (empty: IMAGE.sock if a
// server answers there).
extern std::string socket_option;
// The server that serves IMAGE, if one does: *out is set and kExitOk. Not
// served: *out stays empty and kExitOk. An explicit --socket nobody answers on
// is an error (its exit code).
int connect_if_served(const std::string& image, std::unique_ptr<RemoteFilesystem>* out);
// For commands that need the device itself (mkfs, repair): kExitBusy with a
// message naming the server when IMAGE is served, else kExitOk.
int refuse_if_served(const std::string& image, const char* command);

// An image opened and mounted for one command.
struct Session {
  std::unique_ptr<Device> device;
  std::unique_ptr<Filesystem> fs;
};

// Opens and mounts IMAGE; on failure prints the error and returns its exit code.
// A read-only session opens the image without write permission.
int open_session(const std::string& image, MountMode mode, Session* out);
// Unmounts; returns the exit code.
int close_session(Session& session);
// Opens and mounts IMAGE, runs fn, unmounts; the first failure's exit code.
// When a server serves IMAGE, fn runs against it instead (same output, same
// exit codes), whatever the mode.
int with_mounted(const std::string& image, MountMode mode, const std::function<int(Filesystem&)>& fn);
// Prints "poise: <context>: <message>" and returns the exit code for the error.
int report(const std::string& context, const Error& error);
// Prints "poise: <message>" (an error that already names its subject).
int report(const Error& error);
// The error number of the latest report (0 before any): a command working
// through many files stops at ESHUTDOWN (its server went away) instead of
// telling it once per file left.
extern int last_reported_error;

// True while a progress line (put's "put: N files, X MiB", rewritten in place
// on a terminal) ends without a newline: a message ends it first.
extern bool progress_line_open;
inline void end_progress_line() {
  if (progress_line_open) std::fputs("\n", stderr);
  progress_line_open = false;
}

// Writes to stderr without ever throwing: a full or closed stderr must not turn
// a warning into an exception that stops the work (the message is simply lost).
template <class... Args>
void eprint(fmt::format_string<Args...> format, Args&&... args) {
  std::string text = fmt::format(format, std::forward<Args>(args)...);
  end_progress_line();
  std::fputs(text.c_str(), stderr);
}

// Set by main when standard input was closed at startup (it then reads as
// /dev/null): `put -` refuses it instead of storing an empty file.
extern bool stdin_was_closed;
// Set by main when standard output was closed at startup (it then writes to
// /dev/full, so output fails as a write to a closed stream would).
extern bool stdout_was_closed;
// Set once a command has told of an output write failure itself: main's own
// check of the output then stays quiet (one message, not two).
extern bool output_error_reported;

// Refuses an empty PATH argument (a usage error: an empty path is never "/").
extern const CLI::Validator kNonEmptyPath;
// Refuses an option given with an empty value (`--offset ""`).
extern const CLI::Validator kNonEmptyValue;

// A byte count or offset option ("4096", "8M"; no sign, no hex, no overflow):
// strings parsed strictly after CLI11 has read them.
std::optional<uint64_t> parse_byte_count(const std::string& option, const std::string& text);

// Whether LOCAL (a file outside the image) is the image itself or a link to it:
// copying the image into or out of itself would destroy it.
bool is_the_image(const std::string& local, const std::string& image);
// The same for a standard stream (`get IMG /f - 1<>IMG`).
bool stream_is_the_image(int fd, const std::string& image);

}  // namespace poise::cli
