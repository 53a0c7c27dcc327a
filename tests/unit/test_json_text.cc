// Text from input files may hold any bytes. Every writer of JSON (status
// file, events, --json output) and of UTF-8 text (log lines, metric labels)
// must turn invalid UTF-8 into U+FFFD instead of throwing.
#include <doctest/doctest.h>

#include <stdio.h>
#include <unistd.h>

#include <string>

#include "common/json_text.h"
#include "common/log.h"

using namespace egressd;

namespace {

const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD
// What a broken editor leaves: a lone 0xF7 (never valid in UTF-8) and a
// sequence cut short (the first two bytes of a three-byte character).
const std::string kBroken = std::string("api.ersion:\xF7 x") + "\xE6\x97";

// What log::line writes on stderr while `write` runs.
template <typename Write>
std::string captured_stderr(Write write) {
    std::fflush(stderr);
    FILE* capture = std::tmpfile();
    REQUIRE(capture != nullptr);
    const int saved = ::dup(STDERR_FILENO);
    ::dup2(::fileno(capture), STDERR_FILENO);
    write();
    std::fflush(stderr);
    ::dup2(saved, STDERR_FILENO);
    ::close(saved);
    std::string text;
    std::rewind(capture);
    for (int c; (c = std::fgetc(capture)) != EOF;) text += static_cast<char>(c);
    std::fclose(capture);
    return text;
}

}  // namespace

TEST_CASE("json_text: invalid UTF-8 becomes U+FFFD instead of throwing") {
    const nlohmann::json status = {{"lastError", {{"message", "meshconfig.yaml:1:1: got \"" + kBroken + "\""}}},
                                   {"policyErrors", {kBroken}},
                                   {kBroken, "a key too"}};
    CHECK_THROWS_AS(status.dump(), nlohmann::json::type_error);  // what crashed the agent
    std::string text;
    REQUIRE_NOTHROW(text = json_text(status, 2));
    const auto parsed = nlohmann::json::parse(text);  // valid JSON, valid UTF-8
    const std::string message = parsed["lastError"]["message"];
    CHECK(message == "meshconfig.yaml:1:1: got \"api.ersion:" + kReplacement + " x" + kReplacement + "\"");
    CHECK(parsed["policyErrors"][0] == "api.ersion:" + kReplacement + " x" + kReplacement);
    CHECK(parsed.contains("api.ersion:" + kReplacement + " x" + kReplacement));
}

TEST_CASE("json_text: valid text is written as it is") {
    const nlohmann::json value = {{"name", "café → 日本"}, {"n", 3}};
    CHECK(json_text(value) == value.dump());
    CHECK(json_text(value, 2) == value.dump(2));
    const nlohmann::ordered_json ordered = {{"time", "t"}, {"level", "info"}};
    CHECK(json_text(ordered) == R"({"time":"t","level":"info"})");
}

TEST_CASE("valid_utf8: repairs only what is invalid") {
    CHECK(valid_utf8("plain ascii") == "plain ascii");
    CHECK(valid_utf8("café → 日本") == "café → 日本");
    CHECK(valid_utf8("") == "");
    CHECK(valid_utf8(kBroken) == "api.ersion:" + kReplacement + " x" + kReplacement);
    CHECK(valid_utf8("\xC0\xAF") != "\xC0\xAF");  // an overlong '/' is not passed through
    CHECK(valid_utf8(std::string("a\0b", 3)) == std::string("a\0b", 3));
}

TEST_CASE("log: a JSON log line with invalid UTF-8 is one valid JSON object") {
    log::json_format() = true;
    const std::string line = captured_stderr([] { log::error("policy not applied: {}", kBroken); });
    log::json_format() = false;
    REQUIRE(!line.empty());
    CHECK(line.back() == '\n');
    const auto parsed = nlohmann::json::parse(line);
    CHECK(parsed["level"] == "error");
    CHECK(parsed["msg"] == "policy not applied: api.ersion:" + kReplacement + " x" + kReplacement);
    CHECK(line.rfind("{\"time\":", 0) == 0);  // time first, for people reading the log
}

TEST_CASE("log: a text log line is valid UTF-8 too") {
    const std::string line = captured_stderr([] { log::info("got {}", kBroken); });
    CHECK(line.find("got api.ersion:" + kReplacement + " x" + kReplacement + "\n") != std::string::npos);
    CHECK(valid_utf8(line) == line);
}
