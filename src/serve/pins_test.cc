// Pins through poise serve: a client pins a range and reads it zero-copy in
// the server's device memory; writers in every process wait for the pin; a pin
// outlives its connection as a private copy of what it showed; a client that
// dies, or does not answer when its pins are let go, loses them; removal and a
// machine check in a pinned piece reach the pinning client as they should.
#include <sys/mman.h>

#include <gtest/gtest.h>

#include <thread>

#include "base/random.h"
#include "serve/serve_test_util.h"

namespace poise::serve {
namespace {
using namespace poise::testing;  // NOLINT(google-build-using-namespace)

std::string pinned_bytes(const Pin& pin) {
  std::string out;
  for (std::span<const std::byte> s : pin.segments()) out.append(reinterpret_cast<const char*>(s.data()), s.size());
  return out;
}

// A pin through the server shows the file's own device memory (and zeros for
// a hole), and holds it as an in-process pin does: another client's truncate
// waits for its release, and the pinning client's own write is refused.
TEST(Serve, APinThroughTheServerShowsTheBytesAndHoldsThem) {
  Served served;
  const std::string data = std::string(4096, 'a') + std::string(4096, 'b');
  write_file(served.fs(), "/p", data);
  ASSERT_OK(served.fs().truncate(*served.fs().lookup("/p"), 5 * 4096));  // a hole after the data
  auto pinner = served.client();
  auto other = served.client();
  ASSERT_NE(pinner, nullptr);
  ASSERT_NE(other, nullptr);
  const InodeNumber ino = *pinner->lookup("/p");
  auto pin = pinner->pin(ino, 100, 5 * 4096 - 200);
  ASSERT_OK(pin);
  std::string expected = data + std::string(3 * 4096, '\0');
  EXPECT_EQ(pinned_bytes(*pin), expected.substr(100, 5 * 4096 - 200));
  EXPECT_EQ(pinner->pin_count(), 1u);
  EXPECT_EQ(served.fs().pin_count(), 1u) << "the server holds no pin for the client";
  // Zero copy: the first piece is the file's block as the device holds it.
  const uint64_t at = device_offset_of(served.fs(), "/p", 0);
  served.device().data()[at + 100] = std::byte{'Z'};
  EXPECT_EQ(pinned_bytes(*pin)[0], 'Z');
  served.device().data()[at + 100] = std::byte{'a'};
  // The pinning client may not change what it pinned (it would wait for itself).
  EXPECT_ERRNO(pinner->write(ino, 0, as_bytes(std::string("x"))), EDEADLK);
  // Another client's truncate waits for the release.
  std::atomic<bool> truncated{false};
  std::thread t([&] {
    EXPECT_TRUE(other->truncate(ino, 0).has_value());
    truncated = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_FALSE(truncated.load()) << "a truncate freed pinned blocks";
  EXPECT_EQ(pinned_bytes(*pin), expected.substr(100, 5 * 4096 - 200));
  pin->release();
  t.join();
  EXPECT_TRUE(truncated.load());
  EXPECT_EQ(pinner->pin_count(), 0u);
  EXPECT_EQ(served.fs().pin_count(), 0u);
  // What a pin may not cover, as in-process.
  EXPECT_ERRNO(pinner->pin(ino, 0, 4096), EINVAL);  // past the end of the (now empty) file
  EXPECT_ERRNO(pinner->pin(ino, 0, 0), EINVAL);
  // At most 1 GiB pinned by one client at once (a sparse file here).
  ASSERT_OK(served.fs().truncate(ino, 2ull << 30));
  EXPECT_ERRNO(pinner->pin(ino, 0, (1ull << 30) + 1), EFBIG);
  auto big = pinner->pin(ino, 0, 1ull << 30);
  ASSERT_OK(big);
  EXPECT_ERRNO(pinner->pin(ino, 1ull << 30, 4096), EAGAIN);
  big->release();
  EXPECT_TRUE(pinner->pin(ino, 1ull << 30, 4096).has_value());
}

// When the connection ends (the client disconnects, or the server goes away)
// the server's pin goes with it and the blocks may be reused; a pin still held
// keeps showing what it showed, as a private copy, never the blocks' new bytes.
TEST(Serve, APinOutlivingItsConnectionKeepsWhatItShowed) {
  for (bool server_dies : {false, true}) {
    SCOPED_TRACE(server_dies ? "the server goes away" : "the client disconnects");
    Served served;
    const std::string data = std::string(4096, 'k') + std::string(4096, 'l');
    write_file(served.fs(), "/k", data);
    auto pinner = served.client();
    ASSERT_NE(pinner, nullptr);
    auto pin = pinner->pin(*pinner->lookup("/k"), 0, data.size());
    ASSERT_OK(pin);
    const uint64_t at = device_offset_of(served.fs(), "/k", 0);
    if (server_dies) {
      served.stop();  // the client is told before the server lets its pins go
    } else {
      pinner->shutdown();
    }
    EXPECT_EQ(served.fs().pin_count(), 0u) << "the server still holds the pin of a client that left";
    // The blocks are free to change now: the pin must not see it.
    std::memset(served.device().data() + at, 'N', 2 * 4096);
    EXPECT_EQ(pinned_bytes(*pin), data);
    if (server_dies) EXPECT_ERRNO(pinner->stat("/k"), ESHUTDOWN);
    pinner.reset();  // the pin outlives the client object too
    EXPECT_EQ(pinned_bytes(*pin), data);
    pin->release();
  }
}

// Pins of unaligned ranges, several on one page and one spanning many pages
// all keep their bytes when the server lets them go.
TEST(Serve, ManyPinsSharingPagesAllKeepTheirBytes) {
  Served served;
  std::string data(64 * 4096, '\0');
  Rng rng(test_seed("Serve.ManyPinsSharingPagesAllKeepTheirBytes"));
  for (char& c : data) c = static_cast<char>('a' + rng.below(26));
  write_file(served.fs(), "/many", data);
  auto pinner = served.client();
  ASSERT_NE(pinner, nullptr);
  const InodeNumber ino = *pinner->lookup("/many");
  std::vector<std::pair<uint64_t, uint64_t>> ranges = {{0, 100}, {50, 4000}, {4095, 2}, {10, 64 * 4096 - 20}};
  for (int i = 0; i < 20; ++i) {
    const uint64_t at = rng.below(data.size() - 1);
    ranges.emplace_back(at, 1 + rng.below(std::min<uint64_t>(data.size() - at, 3 * 4096)));
  }
  std::vector<Pin> pins;
  for (const auto& [at, length] : ranges) {
    auto pin = pinner->pin(ino, at, length);
    ASSERT_OK(pin);
    pins.push_back(std::move(*pin));
  }
  pins[1].release();  // a pin released before the end is simply gone
  served.stop();
  EXPECT_EQ(served.fs().pin_count(), 0u);
  for (uint64_t b = 0; b < data.size(); b += 4096) {
    std::memset(served.device().data() + device_offset_of(served.fs(), "/many", b), 'N', 4096);
  }
  for (size_t i = 0; i < pins.size(); ++i) {
    if (i == 1) continue;
    EXPECT_EQ(pinned_bytes(pins[i]), data.substr(ranges[i].first, ranges[i].second)) << "pin " << i;
  }
}

// A client's pins are its connection's: it may not change a file it pinned
// (reflink and clone onto it included: they would wait for the pin). Two
// clients that each wait for the other's pin are not stuck: an unpin goes on
// a channel of its own, never behind the client's waiting request.
TEST(Serve, PinsOfTwoClientsNeverWaitForEachOtherForGood) {
  Served served;
  write_file(served.fs(), "/x", std::string(2 * 4096, 'x'));
  write_file(served.fs(), "/y", std::string(2 * 4096, 'y'));
  write_file(served.fs(), "/src", std::string(2 * 4096, 's'));
  auto a = served.client();
  auto b = served.client();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  const InodeNumber x = *a->lookup("/x"), y = *a->lookup("/y"), src = *a->lookup("/src");
  auto pin_x = a->pin(x, 0, 2 * 4096);
  auto pin_y = b->pin(y, 0, 2 * 4096);
  ASSERT_OK(pin_x);
  ASSERT_OK(pin_y);
  EXPECT_ERRNO(a->reflink(src, x), EDEADLK);
  EXPECT_ERRNO(a->clone_range(src, 0, x, 0, 4096), EDEADLK);
  EXPECT_ERRNO(a->punch_hole(x, 0, 4096), EDEADLK);
  // a truncates y (waits for b's pin), b truncates x (waits for a's pin).
  std::atomic<int> done{0};
  std::thread ta([&] {
    EXPECT_TRUE(a->truncate(y, 0).has_value());
    ++done;
  });
  std::thread tb([&] {
    EXPECT_TRUE(b->truncate(x, 0).has_value());
    ++done;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(done.load(), 0) << "a truncate went past a pin";
  pin_x->release();  // a's connection is busy waiting; the release still gets through
  pin_y->release();
  ta.join();
  tb.join();
  EXPECT_EQ(done.load(), 2);
  EXPECT_EQ(served.fs().pin_count(), 0u);
  EXPECT_EQ(read_file(served.fs(), "/x"), "");
}

// Device removal waits for every pin; a client's pins are let go first (the
// client keeps private copies), so a client that holds on does not hold the
// removal up, and no pin reads the device afterwards.
TEST(Serve, RemovalLetsClientPinsGoAsPrivateCopies) {
  Served served;
  const std::string data(3 * 4096, 'r');
  write_file(served.fs(), "/r", data);
  auto pinner = served.client();
  auto operator_fs = served.client();
  ASSERT_NE(pinner, nullptr);
  ASSERT_NE(operator_fs, nullptr);
  const InodeNumber ino = *pinner->lookup("/r");
  auto pin = pinner->pin(ino, 0, data.size());
  ASSERT_OK(pin);
  const uint64_t at = device_offset_of(served.fs(), "/r", 0);
  std::atomic<bool> removed{false};
  std::thread remover([&] {
    EXPECT_TRUE(operator_fs->offline(static_cast<uint8_t>(OfflineStep::PreRemove)).has_value());
    EXPECT_TRUE(operator_fs->offline(static_cast<uint8_t>(OfflineStep::Remove)).has_value());
    removed = true;
  });
  for (int i = 0; i < 1000 && !removed.load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(removed.load()) << "the removal waited for a client's pin";
  if (!removed.load()) pin->release();  // let it end
  remover.join();
  EXPECT_EQ(served.fs().pin_count(), 0u);
  std::memset(served.device().data() + at, 'X', data.size());  // the memory now holds something else
  EXPECT_EQ(pinned_bytes(*pin), data);
  EXPECT_FALSE(pinner->pin(ino, 0, 10).has_value()) << "a pin after the removal";
}

// A machine check in a pinned piece (read by the client straight from device
// memory) is an error in guarded(), and the server records the memory. The
// signal is crafted here, as for a mapping above.
TEST(Serve, AMachineCheckInAPinnedPieceIsEIOAndReachesTheServer) {
  Served served;
  write_file(served.fs(), "/m", std::string(2 * 4096, 'm'));
  auto pinner = served.client();
  ASSERT_NE(pinner, nullptr);
  auto pin = pinner->pin(*pinner->lookup("/m"), 0, 2 * 4096);
  ASSERT_OK(pin);
  ASSERT_EQ(pin->segments().size(), 1u);
  const std::byte* page = pin->segments()[0].data() + 4096;
  auto consumed = guarded([&] {
    siginfo_t si;
    std::memset(&si, 0, sizeof si);
    si.si_signo = SIGBUS;
    si.si_code = BUS_MCEERR_AR;
    si.si_addr = const_cast<std::byte*>(page) + 9;
    si.si_addr_lsb = 12;
    ::syscall(SYS_rt_tgsigqueueinfo, ::getpid(), ::gettid(), SIGBUS, &si);
  });
  ASSERT_FALSE(consumed.has_value());
  EXPECT_EQ(consumed.error().code, EIO);
  const uint64_t lost = device_offset_of(served.fs(), "/m", 4096);
  for (int i = 0; i < 500 && !recorded_bad(served.fs(), lost); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(recorded_bad(served.fs(), lost)) << "the server never heard of the machine check in a pin";
  EXPECT_FALSE(recorded_bad(served.fs(), device_offset_of(served.fs(), "/m", 0)));
  pin->release();
  EXPECT_ERRNO(pinner->pin(*pinner->lookup("/m"), 4096, 10), EIO);
}

// A client killed while it holds a pin gives it back: a truncate waiting for
// the pinned blocks goes on once the process is dead.
// args: socket, path, bytes to pin from the start.
POISE_CHILD_MAIN(pins_and_waits) {
  auto fs = connect(args.at(0));
  CHILD_CHECK(fs.has_value());
  auto pin = (*fs)->pin(*(*fs)->lookup(args.at(1)), 0, std::stoull(args.at(2)));
  CHILD_CHECK(pin.has_value());
  me.ready();
  for (;;) ::pause();
}

TEST(ServeMapping, AKilledClientsPinIsReleased) {
  Served served;
  write_file(served.fs(), "/pinned", std::string(3 * 4096, 'q'));
  Child child("pins_and_waits", {served.socket(), "/pinned", std::to_string(3 * 4096)});
  ASSERT_TRUE(child.wait_until_ready());
  EXPECT_EQ(served.fs().pin_count(), 1u);
  std::atomic<bool> truncated{false};
  std::thread t([&] {
    EXPECT_TRUE(served.fs().truncate(*served.fs().lookup("/pinned"), 0).has_value());
    truncated = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_FALSE(truncated.load()) << "a truncate freed blocks a live client had pinned";
  ::kill(child.pid(), SIGKILL);
  EXPECT_EQ(exit_code(child.wait()), 128 + SIGKILL);
  t.join();  // returns once the server has dropped the dead client's pin
  EXPECT_TRUE(truncated.load());
  EXPECT_EQ(served.fs().pin_count(), 0u);
}

// A live client that does not acknowledge pins-released (stopped here) is
// killed before the server lets its pins go, as for a recall.
TEST(ServeMapping, AClientThatDoesNotAnswerPinsReleasedIsKilledFirst) {
  Served served(300);
  write_file(served.fs(), "/held", std::string(2 * 4096, 'h'));
  Child child("pins_and_waits", {served.socket(), "/held", std::to_string(2 * 4096)});
  ASSERT_TRUE(child.wait_until_ready());
  ASSERT_EQ(served.fs().pin_count(), 1u);
  ASSERT_TRUE(child.stop()) << "the client did not stop";
  served.stop();  // drops every client's pins: this one's only once it is dead
  EXPECT_EQ(served.fs().pin_count(), 0u);
  int status = 0;
  bool dead = false;
  for (int i = 0; i < 500 && !dead; ++i) {
    dead = ::waitpid(child.pid(), &status, WNOHANG) == child.pid();
    if (!dead) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(dead) << "the stopped client was not killed before its pins were let go";
  EXPECT_EQ(exit_code(status), 128 + SIGKILL);
  child.forget();
}


}  // namespace
}  // namespace poise::serve
