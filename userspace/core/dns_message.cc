#include "core/dns_message.h"

#include <algorithm>
#include <optional>

#include <fmt/format.h>

namespace egressd::dns {

namespace {

constexpr size_t kHeaderLength = 12;
constexpr size_t kMaxLabelLength = 63;
constexpr size_t kMaxWireName = 255;    // length bytes and labels, the root's 0 included
constexpr size_t kMaxTextName = 253;    // the same name written with dots
constexpr uint32_t kTtlTopBit = 0x80000000u;

char fold(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

uint64_t fold_label(uint64_t hash, std::string_view label) {
    hash = (hash ^ label.size()) * EGRESSD_DNS_HASH_PRIME;
    for (char c : label) hash = (hash ^ static_cast<uint8_t>(fold(c))) * EGRESSD_DNS_HASH_PRIME;
    return hash;
}

// A name read from a message: its labels, and where the message goes on.
struct ReadName {
    egressd_dns_status status = EGRESSD_DNS_OK;
    std::vector<std::string> labels;
    size_t next = 0;  // just after the name as it is written at the start offset
};

// Reads the name at `start`, following compression pointers (RFC 1035 4.1.4)
// that must point before themselves. The checks come in the order the
// packet program makes them, so that both give the same status.
ReadName read_name(std::span<const uint8_t> m, size_t start) {
    ReadName out;
    size_t at = start, wire = 1, pointers = 0;
    std::optional<size_t> after_first_pointer;
    const size_t steps = EGRESSD_DNS_MAX_LABELS + EGRESSD_DNS_MAX_POINTERS + 1;
    for (size_t step = 0; step < steps; ++step) {
        if (at >= m.size()) return {EGRESSD_DNS_MALFORMED, {}, 0};
        const uint8_t length = m[at];
        if (length == 0) {
            out.next = after_first_pointer.value_or(at + 1);
            return out;
        }
        switch (length >> 6) {
            case 3: {
                if (at + 1 >= m.size()) return {EGRESSD_DNS_MALFORMED, {}, 0};
                const size_t target = (size_t{length & 0x3fu} << 8) | m[at + 1];
                if (target >= at) return {EGRESSD_DNS_MALFORMED, {}, 0};
                if (!after_first_pointer) after_first_pointer = at + 2;
                if (++pointers > EGRESSD_DNS_MAX_POINTERS) return {EGRESSD_DNS_UNSUPPORTED, {}, 0};
                at = target;
                continue;
            }
            case 1:
            case 2:
                return {EGRESSD_DNS_MALFORMED, {}, 0};
            default:
                break;
        }
        wire += length + 1u;
        if (wire > kMaxWireName || at + length >= m.size()) return {EGRESSD_DNS_MALFORMED, {}, 0};
        if (out.labels.size() >= EGRESSD_DNS_MAX_LABELS) return {EGRESSD_DNS_UNSUPPORTED, {}, 0};
        out.labels.emplace_back(reinterpret_cast<const char*>(&m[at + 1]), length);
        at += length + 1u;
    }
    return {EGRESSD_DNS_UNSUPPORTED, {}, 0};
}

uint16_t be16(std::span<const uint8_t> m, size_t at) { return static_cast<uint16_t>(m[at] << 8 | m[at + 1]); }
uint32_t be32(std::span<const uint8_t> m, size_t at) { return uint32_t{be16(m, at)} << 16 | be16(m, at + 2); }

// A name reached from a question: by the question itself or a CNAME.
struct ChainLink {
    uint64_t hash;
    uint32_t ttl;
    uint16_t question;
};

const ChainLink* find_link(const std::vector<ChainLink>& chain, uint64_t hash) {
    auto it = std::find_if(chain.begin(), chain.end(), [hash](const ChainLink& l) { return l.hash == hash; });
    return it == chain.end() ? nullptr : &*it;
}

void add_link(std::vector<ChainLink>& chain, ChainLink link) {
    if (chain.size() < EGRESSD_DNS_MAX_CHAIN) chain.push_back(link);
}

LearnedAddress address_of(std::span<const uint8_t> rdata, uint32_t ttl, uint16_t question) {
    LearnedAddress a;
    if (rdata.size() == 4) {
        a.address[10] = 0xff;
        a.address[11] = 0xff;
        std::copy(rdata.begin(), rdata.end(), a.address.begin() + 12);
    } else {
        std::copy(rdata.begin(), rdata.end(), a.address.begin());
    }
    a.ttl = ttl;
    a.question = question;
    return a;
}

// The answer records; false when the response is not whole (r.status says why).
bool read_answers(std::span<const uint8_t> m, size_t at, unsigned count, std::vector<ChainLink>& chain, Response& r) {
    for (unsigned i = 0; i < count; ++i) {
        ReadName owner = read_name(m, at);
        if (owner.status != EGRESSD_DNS_OK) {
            r.status = owner.status;
            return false;
        }
        const size_t fixed = owner.next;  // TYPE, CLASS, TTL, RDLENGTH
        if (fixed + 10 > m.size() || fixed + 10 + be16(m, fixed + 8) > m.size()) {
            r.status = EGRESSD_DNS_MALFORMED;
            return false;
        }
        const uint16_t type = be16(m, fixed), klass = be16(m, fixed + 2), rdlength = be16(m, fixed + 8);
        uint32_t ttl = be32(m, fixed + 4);
        if (ttl & kTtlTopBit) ttl = 0;  // RFC 2181 section 8
        const size_t rdata = fixed + 10;
        at = rdata + rdlength;
        const ChainLink* link = find_link(chain, name_hash(owner.labels));
        if (!link || klass != EGRESSD_DNS_CLASS_IN) continue;
        ttl = std::min(ttl, link->ttl);
        const uint16_t question = link->question;
        const bool a = type == EGRESSD_DNS_TYPE_A && rdlength == 4;
        const bool aaaa = type == EGRESSD_DNS_TYPE_AAAA && rdlength == 16;
        if (a || aaaa) {
            if (r.addresses.size() < EGRESSD_DNS_MAX_ADDRESSES)
                r.addresses.push_back(address_of(m.subspan(rdata, rdlength), ttl, question));
            continue;
        }
        if (type != EGRESSD_DNS_TYPE_CNAME) continue;
        ReadName target = read_name(m, rdata);
        if (target.status != EGRESSD_DNS_OK) {
            r.status = target.status;
            return false;
        }
        if (target.next > rdata + rdlength) {
            r.status = EGRESSD_DNS_MALFORMED;
            return false;
        }
        const uint64_t target_hash = name_hash(target.labels);
        if (!find_link(chain, target_hash)) add_link(chain, {target_hash, ttl, question});
    }
    return true;
}

}  // namespace

std::vector<uint64_t> suffix_hashes(const std::vector<std::string>& labels) {
    std::vector<uint64_t> out;
    uint64_t hash = EGRESSD_DNS_HASH_SEED;
    for (auto it = labels.rbegin(); it != labels.rend(); ++it) out.push_back(hash = fold_label(hash, *it));
    return out;
}

uint64_t name_hash(const std::vector<std::string>& labels) {
    const std::vector<uint64_t> all = suffix_hashes(labels);
    return all.empty() ? EGRESSD_DNS_HASH_SEED : all.back();
}

Result<HostName> parse_host_name(std::string_view text) {
    HostName host;
    std::string_view rest = text;
    if (!rest.empty() && rest.back() == '.') rest.remove_suffix(1);
    if (rest.empty()) return make_error(fmt::format("\"{}\": an empty host name", text));
    if (rest.size() > kMaxTextName)
        return make_error(fmt::format("\"{}\": longer than {} characters", text, kMaxTextName));
    if (rest.starts_with("*.")) {
        host.wildcard = true;
        rest.remove_prefix(2);
    }
    for (;;) {
        const size_t dot = rest.find('.');
        const std::string_view label = rest.substr(0, dot);
        if (label.empty()) return make_error(fmt::format("\"{}\": an empty label", text));
        if (label.size() > kMaxLabelLength)
            return make_error(fmt::format("\"{}\": the label \"{}\" is longer than {} bytes", text, label,
                                          kMaxLabelLength));
        if (label.find('*') != std::string_view::npos)
            return make_error(fmt::format("\"{}\": '*' is only allowed as the whole first label (\"*.example.com\")",
                                          text));
        host.labels.emplace_back(label);
        if (dot == std::string_view::npos) break;
        rest.remove_prefix(dot + 1);
    }
    if (host.labels.size() > EGRESSD_DNS_MAX_LABELS)
        return make_error(fmt::format("\"{}\": more than {} labels, more than answers are read for", text,
                                      EGRESSD_DNS_MAX_LABELS));
    return host;
}

Response parse_response(std::span<const uint8_t> m) {
    Response r;
    if (m.size() > EGRESSD_DNS_PAYLOAD_MAX) {
        r.status = EGRESSD_DNS_UNSUPPORTED;
        return r;
    }
    if (m.size() < kHeaderLength) return r;  // MALFORMED
    r.id = be16(m, 0);
    r.flags = be16(m, 2);
    const unsigned questions = be16(m, 4), answers = be16(m, 6);
    const bool response = (r.flags & 0x8000) != 0;
    const unsigned opcode = (r.flags >> 11) & 0xf, rcode = r.flags & 0xf;
    if (!response || opcode != 0) {
        r.status = EGRESSD_DNS_NOT_RESPONSE;
        return r;
    }
    if (rcode != 0) {
        r.status = EGRESSD_DNS_ERROR_RCODE;
        return r;
    }
    if (questions > EGRESSD_DNS_MAX_QUESTIONS) {
        r.status = EGRESSD_DNS_UNSUPPORTED;
        return r;
    }
    std::vector<ChainLink> chain;
    size_t at = kHeaderLength;
    for (unsigned q = 0; q < questions; ++q) {
        ReadName name = read_name(m, at);
        if (name.status != EGRESSD_DNS_OK) {
            r.status = name.status;
            r.questions.clear();
            return r;
        }
        if (name.next + 4 > m.size()) {
            r.questions.clear();
            return r;  // MALFORMED: no QTYPE and QCLASS
        }
        at = name.next + 4;
        r.questions.push_back(suffix_hashes(name.labels));
        add_link(chain, {name_hash(name.labels), 0xffffffffu, static_cast<uint16_t>(q)});
    }
    r.status = EGRESSD_DNS_OK;
    if (!read_answers(m, at, std::min<unsigned>(answers, EGRESSD_DNS_MAX_RECORDS), chain, r)) {
        r.addresses.clear();
        r.questions.clear();
    }
    return r;
}

}  // namespace egressd::dns
