#include "kernel/event_reader.h"

#include <cstring>

#include "kernel/libbpf_owners.h"

namespace egressd {

struct EventReader::Ring {
    RingBuffer ring;
};

Result<std::unique_ptr<EventReader>> EventReader::open(int events_map_fd, Callback callback) {
    std::unique_ptr<EventReader> reader(new EventReader());
    reader->callback_ = std::move(callback);
    auto on_sample = [](void* self, void* data, size_t size) -> int {
        if (size < sizeof(egressd_event)) return 0;  // not ours: skip
        egressd_event event;
        std::memcpy(&event, data, sizeof(event));
        static_cast<EventReader*>(self)->callback_(event);
        return 0;
    };
    reader->ring_ = std::make_unique<Ring>();
    reader->ring_->ring.reset(ring_buffer__new(events_map_fd, on_sample, reader.get(), nullptr));
    if (!reader->ring_->ring) return system_error("opening the ring buffer " EGRESSD_STRINGIFY(EGRESSD_MAP_EVENTS));
    return reader;
}

EventReader::~EventReader() = default;

int EventReader::epoll_fd() const { return ring_buffer__epoll_fd(ring_->ring.get()); }

Result<int> EventReader::drain() {
    const int n = ring_buffer__consume(ring_->ring.get());
    if (n < 0) return Error{-n, "reading " EGRESSD_STRINGIFY(EGRESSD_MAP_EVENTS)};
    return n;
}

}  // namespace egressd
