// The process-wide index from virtual addresses to the direct mappings there,
// for the fault handler (a signal handler cannot know which filesystem a
// faulting address belongs to). Lookups take a shared lock: they run in the
// faulting thread, which never holds this lock itself.
#pragma once

#include <cstdint>
#include <memory>

namespace poise::mapping {

struct MapState;

void index_address_range(std::byte* va, uint64_t length, std::shared_ptr<MapState> m);
void unindex_address_range(std::byte* va);
// The mapping covering addr, or nullptr.
std::shared_ptr<MapState> find_mapping_at(uintptr_t addr);
// Whether any byte of [p, +length) lies in a direct mapping of this process: a
// buffer there can fault into the filesystem, so the filesystem must not touch
// it while it holds its own locks. Lock-free while no mapping exists.
bool overlaps_mapping(const void* p, uint64_t length);

}  // namespace poise::mapping
