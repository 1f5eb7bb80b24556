#include "cli/exit_codes.h"

#include <cerrno>

namespace poise::cli {

int exit_code_for(int e) {
  switch (e) {
    case 0: return kExitOk;
    case ENOENT:
    case ENODATA: return kExitNotFound;
    case EIO: return kExitIo;
    case EUCLEAN:
    case EBADMSG: return kExitCorrupt;
    case ENOSPC: return kExitNoSpace;
    case EEXIST: return kExitExists;
    case EINVAL:
    case ENOTDIR:
    case EISDIR:
    case ENOTEMPTY:
    case EPERM:
    case ENAMETOOLONG:
    case EFBIG:
    case EMLINK:
    case E2BIG:
    case ERANGE: return kExitInvalid;
    case EBUSY: return kExitBusy;
    case ENOTSUP:
    case EROFS: return kExitUnsupported;
    case EACCES: return kExitDenied;
    default: return kExitFailure;
  }
}

const char* exit_code_table() {
  return "Exit codes:\n"
         "  0  success\n"
         "  1  other failure\n"
         "  2  usage error\n"
         "  3  not found (a file, directory, image or extended attribute)\n"
         "  4  I/O error\n"
         "  5  corrupt image (or check found problems)\n"
         "  6  no space left on the device\n"
         "  7  already exists\n"
         "  8  invalid operation (not a directory, is a directory, not empty, name too long, ...)\n"
         "  9  image busy (in use by another poise process)\n"
         " 10  unsupported (newer format version, unknown features)\n"
         " 11  permission denied (the image file, or poise serve for the caller's uid and gid)\n";
}

}  // namespace poise::cli
