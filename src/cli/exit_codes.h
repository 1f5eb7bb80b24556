// The exit codes of the poise command, one per kind of failure, stable for
// scripts. Documented in the README and in `poise --help`.
#pragma once

namespace poise::cli {

enum ExitCode : int {
  kExitOk = 0,
  kExitFailure = 1,      // anything not listed below
  kExitUsage = 2,        // wrong arguments
  kExitNotFound = 3,     // ENOENT, ENODATA: no such file, directory, image or attribute
  kExitIo = 4,           // EIO: the device could not be read or written
  kExitCorrupt = 5,      // EUCLEAN/EBADMSG: corrupt image; check found problems
  kExitNoSpace = 6,      // ENOSPC: the device is full
  kExitExists = 7,       // EEXIST: the name (or a filesystem, for mkfs) exists
  kExitInvalid = 8,      // EINVAL, ENOTDIR, EISDIR, ENOTEMPTY, EPERM, ENAMETOOLONG, EFBIG
  kExitBusy = 9,         // EBUSY: the image is in use by another poise process
  kExitUnsupported = 10,  // ENOTSUP/EROFS: a newer format or unknown features
  kExitDenied = 11        // EACCES: the image file, or a server refusing the caller's uid/gid
};

int exit_code_for(int error_number);
const char* exit_code_table();  // the table for --help

}  // namespace poise::cli
