// The watch stream framer: events split at any byte, several per chunk.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "k8s/line_framer.h"

namespace egressd::k8s {

namespace {

const std::string kStream =
    "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"a\",\"namespace\":\"ns\",\"resourceVersion\":\"5\"}}}\n"
    "{\"type\":\"MODIFIED\",\"object\":{\"metadata\":{\"name\":\"a\",\"namespace\":\"ns\"},\"note\":\"x\\ny\"}}\r\n"
    "\n"
    "{\"type\":\"BOOKMARK\",\"object\":{\"metadata\":{\"resourceVersion\":\"9\"}}}\n";

std::vector<std::string> frame(const std::vector<std::string_view>& chunks) {
    LineFramer framer;
    std::vector<std::string> lines;
    for (auto chunk : chunks) {
        Status s = framer.feed(chunk, [&](std::string_view line) {
            lines.emplace_back(line);
            return true;
        });
        REQUIRE(s.ok());
    }
    CHECK(framer.buffered() == 0);
    return lines;
}

}  // namespace

TEST_CASE("framer: the same three events whatever the split points") {
    const std::vector<std::string> whole = frame({kStream});
    REQUIRE(whole.size() == 3);
    CHECK(whole[1].back() == '}');  // the '\r' is gone
    const std::string_view s = kStream;
    for (size_t i = 0; i <= s.size(); ++i) {
        CAPTURE(i);
        CHECK(frame({s.substr(0, i), s.substr(i)}) == whole);
    }
    // Two split points, every pair: a line can span three chunks.
    for (size_t i = 0; i <= s.size(); i += 3)
        for (size_t j = i; j <= s.size(); ++j) {
            CAPTURE(i);
            CAPTURE(j);
            REQUIRE(frame({s.substr(0, i), s.substr(i, j - i), s.substr(j)}) == whole);
        }
    std::vector<std::string_view> bytes;
    for (size_t i = 0; i < s.size(); ++i) bytes.push_back(s.substr(i, 1));
    CHECK(frame(bytes) == whole);
}

TEST_CASE("framer: a partial last line waits; a callback returning false stops") {
    LineFramer framer;
    int calls = 0;
    REQUIRE(framer.feed("one\ntwo\nthr", [&](std::string_view) { return ++calls < 1; }).ok());
    CHECK(calls == 1);
    framer.reset();
    std::vector<std::string> lines;
    const auto collect = [&](std::string_view line) {
        lines.emplace_back(line);
        return true;
    };
    REQUIRE(framer.feed("par", collect).ok());
    CHECK(framer.buffered() == 3);
    REQUIRE(framer.feed("tial\nnext", collect).ok());
    CHECK(lines == std::vector<std::string>{"partial"});
    CHECK(framer.buffered() == 4);
}

TEST_CASE("framer: a line over the limit is an error") {
    LineFramer framer(8);
    const auto ignore = [](std::string_view) { return true; };
    CHECK(framer.feed("12345678\n", ignore).ok());
    CHECK_FALSE(framer.feed("123456789\n", ignore).ok());
    CHECK(framer.feed("12345", ignore).ok());
    const Status s = framer.feed("6789", ignore);
    REQUIRE_FALSE(s.ok());
    CHECK(s.error().message.find("longer than 8") != std::string::npos);
    CHECK(framer.buffered() == 0);
}

TEST_CASE("watch events: types, objects, keys, Status codes") {
    auto added = parse_watch_event(
        R"({"type":"ADDED","object":{"metadata":{"name":"p","namespace":"n","resourceVersion":"7"}}})");
    REQUIRE(added.ok());
    CHECK(added->type == WatchEvent::Type::kAdded);
    CHECK(object_key(added->object) == "n/p");
    CHECK(resource_version_of(added->object) == "7");
    auto node = parse_watch_event(R"({"type":"DELETED","object":{"metadata":{"name":"node-1"}}})");
    REQUIRE(node.ok());
    CHECK(node->type == WatchEvent::Type::kDeleted);
    CHECK(object_key(node->object) == "node-1");
    auto error = parse_watch_event(
        R"J({"type":"ERROR","object":{"kind":"Status","status":"Failure","message":"too old resource version: 1 (3)","reason":"Expired","code":410}})J");
    REQUIRE(error.ok());
    CHECK(error->type == WatchEvent::Type::kError);
    CHECK(status_code(error->object) == 410);
    CHECK(status_message(error->object) == "too old resource version: 1 (3)");
    CHECK(parse_watch_event(R"({"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"9"}}})")->type ==
          WatchEvent::Type::kBookmark);
    CHECK_FALSE(parse_watch_event("{\"type\":\"ADDED\"").ok());
    CHECK_FALSE(parse_watch_event(R"({"type":"ADDED"})").ok());
    CHECK_FALSE(parse_watch_event(R"({"type":"SYNC","object":{}})").ok());
    CHECK(object_key(nlohmann::json::object()) == "");
    CHECK(is_expired_status(error->object));
    CHECK(is_expired_status({{"kind", "Status"}, {"code", 410}, {"reason", "Gone"}}));
    CHECK(is_expired_status({{"code", 504}, {"message", "Too large resource version: 9, current: 3"}}));
    CHECK(is_expired_status(
        {{"code", 504}, {"details", {{"causes", {{{"reason", "ResourceVersionTooLarge"}, {"message", "x"}}}}}}}));
    CHECK_FALSE(is_expired_status({{"code", 504}, {"message", "timeout"}}));
    CHECK_FALSE(is_expired_status({{"code", 500}}));
}

}  // namespace egressd::k8s
