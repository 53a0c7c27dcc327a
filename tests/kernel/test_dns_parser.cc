// The packet program's DNS parser (bpf/dns.bpf.h), run by the kernel with
// BPF_PROG_TEST_RUN on the real program egressd_dns_in, against the C++
// reference (core/dns_message): real answers from dnsmasq
// (tests/fixtures/dns/answers.txt), hand-made edge cases, and a seeded
// random and mutation fuzz of 100,000+ packets. Both must give the same
// status, questions and learned addresses for every packet.
//
// Needs root (loading programs), nothing else: no cgroup, no namespace.
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <doctest/doctest.h>
#include <sched.h>
#include <sys/resource.h>

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/dns_message.h"
#include "egressd.skel.h"
#include "testenv.h"

using namespace egressd;

namespace {

using Bytes = std::vector<uint8_t>;

std::string fixture_path(const std::string& name) { return std::string(EGRESSD_SOURCE_DIR) + "/tests/fixtures/" + name; }

Bytes from_hex(const std::string& hex) {
    Bytes out;
    for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
    return out;
}

// An Ethernet frame as BPF_PROG_TEST_RUN wants it for a cgroup_skb program
// (it strips the Ethernet header): IPv4 or IPv6, UDP from port 53.
Bytes frame(const Bytes& dns, bool ipv6 = false, uint16_t source_port = 53) {
    Bytes f(12, 0);
    f.push_back(ipv6 ? 0x86 : 0x08);
    f.push_back(ipv6 ? 0xdd : 0x00);
    const size_t udp_len = 8 + dns.size();
    if (!ipv6) {
        const size_t total = 20 + udp_len;
        const uint8_t ip[20] = {0x45, 0, uint8_t(total >> 8), uint8_t(total), 0, 1, 0x40, 0, 64, 17, 0, 0,
                                198, 18, 0, 53, 198, 18, 0, 2};
        f.insert(f.end(), ip, ip + 20);
    } else {
        uint8_t ip[40] = {0x60, 0, 0, 0, uint8_t(udp_len >> 8), uint8_t(udp_len), 17, 64};
        const uint8_t src[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x53};
        const uint8_t dst[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02};
        std::memcpy(ip + 8, src, 16);
        std::memcpy(ip + 24, dst, 16);
        f.insert(f.end(), ip, ip + 40);
    }
    const uint8_t udp[8] = {uint8_t(source_port >> 8), uint8_t(source_port), 0x9c, 0x40, uint8_t(udp_len >> 8),
                            uint8_t(udp_len), 0, 0};
    f.insert(f.end(), udp, udp + 8);
    f.insert(f.end(), dns.begin(), dns.end());
    return f;
}

const egressd_dns_server_key kResolver4 = {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 53}};
const egressd_dns_server_key kResolver6 = {{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x53}};

// The BPF object loaded once (programs are not attached anywhere), its
// dns_in program run on one CPU, the scratch map read on that CPU.
class PacketProgram {
public:
    PacketProgram() {
        skel_.reset(egressd_bpf__open_and_load());
        REQUIRE_MESSAGE(skel_ != nullptr, "loading the BPF object: " << std::strerror(errno));
        cpu_ = sched_getcpu();
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu_, &set);
        REQUIRE(sched_setaffinity(0, sizeof(set), &set) == 0);  // the scratch read is this CPU's
        cpus_ = libbpf_num_possible_cpus();
        REQUIRE(cpus_ > 0);
        values_.resize(static_cast<size_t>(cpus_));
        // The frames' resolvers, 198.18.0.53 and 2001:db8::53, are trusted: their answers are parsed.
        const uint32_t one = 1;
        for (const egressd_dns_server_key& server : {kResolver4, kResolver6})
            REQUIRE(bpf_map_update_elem(bpf_map__fd(skel_->maps.dns_servers_v1), &server, &one, BPF_ANY) == 0);
    }
    ~PacketProgram() {
        cpu_set_t all;
        CPU_ZERO(&all);
        for (int i = 0; i < CPU_SETSIZE; ++i) CPU_SET(i, &all);
        sched_setaffinity(0, sizeof(all), &all);
    }

    egressd_bpf& skel() { return *skel_; }

    // The scratch's status after the program saw `packet`; STATUS_MAX when it did not touch it.
    const egressd_dns_parsed& run(const Bytes& packet) {
        for (auto& v : values_) {
            std::memset(&v, 0, sizeof v);
            v.parsed.status = EGRESSD_DNS_STATUS_MAX;
        }
        const uint32_t answer = EGRESSD_DNS_SCRATCH_ANSWER;  // egressd_dns_in's entry
        const int map = bpf_map__fd(skel_->maps.EGRESSD_MAP_DNS_SCRATCH);
        REQUIRE(bpf_map_update_elem(map, &answer, values_.data(), BPF_ANY) == 0);
        LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = packet.data(), .data_size_in = uint32_t(packet.size()),
                    .repeat = 1);
        REQUIRE(bpf_prog_test_run_opts(bpf_program__fd(skel_->progs.egressd_dns_in), &opts) == 0);
        CHECK(opts.retval == 1);  // the program never drops
        REQUIRE(bpf_map_lookup_elem(map, &answer, values_.data()) == 0);
        return values_[static_cast<size_t>(cpu_)].parsed;
    }

private:
    struct Destroy {
        void operator()(egressd_bpf* s) const { egressd_bpf__destroy(s); }
    };
    std::unique_ptr<egressd_bpf, Destroy> skel_;
    int cpu_ = 0, cpus_ = 0;
    // Per-CPU values are rounded up to 8 bytes; the struct's size is a multiple of 8.
    static_assert(sizeof(egressd_dns_scratch) % 8 == 0);
    std::vector<egressd_dns_scratch> values_;
};

std::string describe(const egressd_dns_parsed& p) {
    std::ostringstream out;
    out << "status " << p.status << ", " << p.questions_count << " questions, " << p.addresses_count << " addresses";
    return out.str();
}

// The kernel's result equals the reference's, field by field.
bool same(const egressd_dns_parsed& kernel, const dns::Response& ref, std::string& why) {
    std::ostringstream out;
    if (kernel.status != uint32_t(ref.status)) out << "status: kernel " << kernel.status << ", reference " << ref.status;
    if (ref.status == EGRESSD_DNS_OK) {
        if (kernel.id != ref.id || kernel.flags != ref.flags) out << "; header differs";
        if (kernel.questions_count != ref.questions.size())
            out << "; questions: kernel " << kernel.questions_count << ", reference " << ref.questions.size();
        for (size_t q = 0; q < ref.questions.size() && q < kernel.questions_count; ++q) {
            const egressd_dns_name& name = kernel.questions[q];
            if (name.labels != ref.questions[q].size())
                out << "; question " << q << ": labels kernel " << name.labels << ", reference " << ref.questions[q].size();
            for (size_t i = 0; i < ref.questions[q].size() && i < name.labels; ++i)
                if (name.suffix[i] != ref.questions[q][i]) out << "; question " << q << " suffix " << i << " differs";
        }
    }
    if (kernel.addresses_count != ref.addresses.size())
        out << "; addresses: kernel " << kernel.addresses_count << ", reference " << ref.addresses.size();
    for (size_t i = 0; i < ref.addresses.size() && i < kernel.addresses_count; ++i) {
        const egressd_dns_address& a = kernel.addresses[i];
        if (std::memcmp(a.addr, ref.addresses[i].address.data(), 16) != 0 || a.ttl != ref.addresses[i].ttl ||
            a.question != ref.addresses[i].question)
            out << "; address " << i << " differs";
    }
    why = out.str();
    return why.empty();
}

std::string address_text(const dns::LearnedAddress& a) {
    char text[INET6_ADDRSTRLEN] = {};
    const bool v4 = std::all_of(a.address.begin(), a.address.begin() + 10, [](uint8_t b) { return b == 0; }) &&
                    a.address[10] == 0xff && a.address[11] == 0xff;
    if (v4)
        inet_ntop(AF_INET, a.address.data() + 12, text, sizeof text);
    else
        inet_ntop(AF_INET6, a.address.data(), text, sizeof text);
    return std::string(text) + "/" + std::to_string(a.ttl);
}

struct Answer {
    std::string name, type, expected;
    Bytes payload;
};

std::vector<Answer> real_answers() {
    std::ifstream in(fixture_path("dns/answers.txt"));
    REQUIRE(in.good());
    std::vector<Answer> out;
    for (std::string line; std::getline(in, line);) {
        if (line.empty() || line[0] == '#') continue;
        std::istringstream fields(line);
        Answer a;
        std::string hex;
        fields >> a.name >> a.type >> a.expected >> hex;
        a.payload = from_hex(hex);
        out.push_back(std::move(a));
    }
    REQUIRE(out.size() >= 10);
    return out;
}

// Hand-made messages: a header, then raw bytes.
Bytes message(uint16_t flags, uint16_t qd, uint16_t an, const Bytes& rest) {
    Bytes m = {0x12, 0x34, uint8_t(flags >> 8), uint8_t(flags), 0, uint8_t(qd), 0, uint8_t(an), 0, 0, 0, 0};
    m.insert(m.end(), rest.begin(), rest.end());
    return m;
}
Bytes name_bytes(const std::string& dotted) {
    Bytes out;
    std::istringstream in(dotted);
    for (std::string label; std::getline(in, label, '.');) {
        out.push_back(uint8_t(label.size()));
        out.insert(out.end(), label.begin(), label.end());
    }
    out.push_back(0);
    return out;
}
Bytes cat(std::initializer_list<Bytes> parts) {
    Bytes out;
    for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
    return out;
}
const Bytes kQuestionTail = {0, 1, 0, 1};                            // A, IN
Bytes rr(const Bytes& owner, uint16_t type, uint32_t ttl, const Bytes& rdata) {
    Bytes out = owner;
    const uint8_t fixed[10] = {uint8_t(type >> 8), uint8_t(type), 0, 1, uint8_t(ttl >> 24), uint8_t(ttl >> 16),
                               uint8_t(ttl >> 8), uint8_t(ttl), uint8_t(rdata.size() >> 8), uint8_t(rdata.size())};
    out.insert(out.end(), fixed, fixed + 10);
    out.insert(out.end(), rdata.begin(), rdata.end());
    return out;
}
const Bytes kPointerToQuestion = {0xc0, 0x0c};

}  // namespace

TEST_CASE("dns parser: the ABI structs have the layout the BPF object's BTF gives them") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    PacketProgram program;
    const btf* types = bpf_object__btf(program.skel().obj);
    REQUIRE(types != nullptr);
    const std::pair<const char*, size_t> structs[] = {{"egressd_dns_scratch", sizeof(egressd_dns_scratch)},
                                                      {"egressd_dns_parsed", sizeof(egressd_dns_parsed)},
                                                      {"egressd_dns_work", sizeof(egressd_dns_work)},
                                                      {"egressd_dns_name", sizeof(egressd_dns_name)},
                                                      {"egressd_dns_address", sizeof(egressd_dns_address)}};
    for (const auto& [name, size] : structs) {
        const int id = btf__find_by_name_kind(types, name, BTF_KIND_STRUCT);
        REQUIRE_MESSAGE(id > 0, name);
        CHECK_MESSAGE(btf__resolve_size(types, id) == static_cast<long long>(size), name);
    }
}

TEST_CASE("dns parser: real answers from dnsmasq teach what they say, the kernel as the reference") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    PacketProgram program;
    for (const Answer& a : real_answers()) {
        CAPTURE(a.name);
        CAPTURE(a.type);
        const dns::Response ref = dns::parse_response(a.payload);
        // As a set: dnsmasq rotates the order of a name's addresses.
        std::vector<std::string> texts;
        for (const auto& address : ref.addresses) texts.push_back(address_text(address));
        std::sort(texts.begin(), texts.end());
        std::string learned;
        for (const auto& text : texts) learned += (learned.empty() ? "" : ",") + text;
        CHECK(learned == (a.expected == "-" ? "" : a.expected));
        if (ref.status == EGRESSD_DNS_OK) {
            std::vector<std::string> labels;
            std::istringstream in(a.name);
            for (std::string label; std::getline(in, label, '.');) labels.push_back(label);
            REQUIRE(ref.questions.size() == 1);
            CHECK(ref.questions[0] == dns::suffix_hashes(labels));
        }
        for (bool ipv6 : {false, true}) {
            std::string why;
            CHECK_MESSAGE(same(program.run(frame(a.payload, ipv6)), ref, why), why);
        }
    }
}

TEST_CASE("dns parser: edge cases give the same result in the kernel and in the reference") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    PacketProgram program;
    const Bytes q = cat({name_bytes("www.example.com"), kQuestionTail});
    const Bytes addr = {203, 0, 113, 7};
    const Bytes v6 = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7};
    struct Case {
        const char* what;
        Bytes payload;
        egressd_dns_status status;
        size_t addresses;
    };
    Bytes long_name;
    for (int i = 0; i < 17; ++i) long_name.insert(long_name.end(), {1, 'a'});
    long_name.push_back(0);
    // Offsets: the question's name is at 12, its record ends at 33.
    const uint8_t after_question = uint8_t(12 + q.size());
    const Bytes edge = name_bytes("edge.cdn.example"), e1 = name_bytes("e1.cdn.example");
    const uint8_t edge_at = uint8_t(after_question + 12);           // rdata of the first CNAME
    const uint8_t e1_at = uint8_t(edge_at + edge.size() + 12);      // rdata of the second
    const Bytes chain = message(0x8180, 1, 3,
                                cat({q, rr(kPointerToQuestion, 5, 300, edge), rr({0xc0, edge_at}, 5, 30, e1),
                                     rr({0xc0, e1_at}, 1, 600, addr)}));
    Bytes rdlength_past_end = message(0x8180, 1, 1, cat({q, rr(kPointerToQuestion, 1, 60, addr)}));
    rdlength_past_end[rdlength_past_end.size() - 5] = 9;  // rdlength 4 -> 9
    Bytes cname_overrun = message(0x8180, 1, 1, cat({q, rr(kPointerToQuestion, 5, 60, name_bytes("x.example"))}));
    cname_overrun[cname_overrun.size() - 12] = 3;  // rdlength 11 -> 3
    Bytes chaos_class = message(0x8180, 1, 1, cat({q, rr(kPointerToQuestion, 1, 60, addr)}));
    chaos_class[chaos_class.size() - 11] = 3;  // class IN -> CH
    const std::vector<Case> cases = {
        {"one A", message(0x8180, 1, 1, cat({q, rr(kPointerToQuestion, 1, 60, addr)})), EGRESSD_DNS_OK, 1},
        {"one AAAA", message(0x8180, 1, 1, cat({q, rr(kPointerToQuestion, 28, 60, v6)})), EGRESSD_DNS_OK, 1},
        {"a TTL of 0", message(0x8180, 1, 1, cat({q, rr(kPointerToQuestion, 1, 0, addr)})), EGRESSD_DNS_OK, 1},
        {"a TTL with the top bit (zero)",
         message(0x8180, 1, 1, cat({q, rr(kPointerToQuestion, 1, 0x80000001, addr)})), EGRESSD_DNS_OK, 1},
        {"an A of 5 bytes is no address",
         message(0x8180, 1, 1, cat({q, rr(kPointerToQuestion, 1, 60, {1, 2, 3, 4, 5})})), EGRESSD_DNS_OK, 0},
        {"an answer for another name", message(0x8180, 1, 1, cat({q, rr(name_bytes("evil.example"), 1, 60, addr)})),
         EGRESSD_DNS_OK, 0},
        {"a query, not a response", message(0x0100, 1, 1, cat({q, rr(kPointerToQuestion, 1, 60, addr)})),
         EGRESSD_DNS_NOT_RESPONSE, 0},
        {"NXDOMAIN", message(0x8183, 1, 0, q), EGRESSD_DNS_ERROR_RCODE, 0},
        {"a header alone, cut", {0x12, 0x34, 0x81, 0x80, 0, 1}, EGRESSD_DNS_MALFORMED, 0},
        {"the record cut", message(0x8180, 1, 1, cat({q, Bytes{0xc0, 0x0c, 0, 1, 0, 1}})), EGRESSD_DNS_MALFORMED, 0},
        {"rdlength past the end", rdlength_past_end, EGRESSD_DNS_MALFORMED, 0},
        {"a pointer forward", message(0x8180, 1, 1, cat({q, rr({0xc0, 0xff}, 1, 60, addr)})), EGRESSD_DNS_MALFORMED, 0},
        {"a pointer to itself", message(0x8180, 1, 0, Bytes{0xc0, 0x0c, 0, 1, 0, 1}), EGRESSD_DNS_MALFORMED, 0},
        {"label type 0x40", message(0x8180, 1, 0, Bytes{0x41, 'a', 0, 0, 1, 0, 1}), EGRESSD_DNS_MALFORMED, 0},
        {"17 labels: more than the parser takes", message(0x8180, 1, 0, cat({long_name, kQuestionTail})),
         EGRESSD_DNS_UNSUPPORTED, 0},
        {"5 questions", message(0x8180, 5, 0, q), EGRESSD_DNS_UNSUPPORTED, 0},
        {"two questions, an answer for the second",
         message(0x8180, 2, 1,
                 cat({q, name_bytes("api.example.org"), kQuestionTail, rr({0xc0, after_question}, 1, 60, addr)})),
         EGRESSD_DNS_OK, 1},
        {"a CNAME chain", chain, EGRESSD_DNS_OK, 1},
        {"a CNAME loop",
         message(0x8180, 1, 2,
                 cat({q, rr(kPointerToQuestion, 5, 60, kPointerToQuestion), rr(kPointerToQuestion, 1, 60, addr)})),
         EGRESSD_DNS_OK, 1},
        {"a CNAME whose target overruns its record", cname_overrun, EGRESSD_DNS_MALFORMED, 0},
        {"a class other than IN", chaos_class, EGRESSD_DNS_OK, 0},
        {"mixed case, the answer in another case",
         message(0x8180, 1, 1,
                 cat({name_bytes("WWW.Example.Com"), kQuestionTail, rr(name_bytes("www.EXAMPLE.com"), 1, 60, addr)})),
         EGRESSD_DNS_OK, 1},
    };
    for (const Case& c : cases) {
        CAPTURE(c.what);
        const dns::Response ref = dns::parse_response(c.payload);
        CHECK(ref.status == c.status);
        CHECK(ref.addresses.size() == c.addresses);
        std::string why;
        CHECK_MESSAGE(same(program.run(frame(c.payload)), ref, why), why);
    }
    // The chain's TTL is the least on the way: 30 s.
    const dns::Response chained = dns::parse_response(chain);
    REQUIRE(chained.addresses.size() == 1);
    CHECK(chained.addresses[0].ttl == 30);
    // The second question's answer says so.
    const dns::Response second = dns::parse_response(cases[16].payload);
    REQUIRE(second.addresses.size() == 1);
    CHECK(second.addresses[0].question == 1);

    // Not DNS: nothing is touched.
    const Bytes answer = cases[0].payload;
    CHECK(program.run(frame(answer, false, 5353)).status == EGRESSD_DNS_STATUS_MAX);
    // From a resolver that is not trusted: not even parsed.
    Bytes untrusted = frame(answer);
    untrusted[14 + 15] = 54;  // the IPv4 source 198.18.0.53 -> .54
    CHECK(program.run(untrusted).status == EGRESSD_DNS_STATUS_MAX);
    CHECK(program.run(frame(answer)).status == EGRESSD_DNS_OK);
    // Over the size the program copies: not learned, said so.
    Bytes big = answer;
    big.resize(EGRESSD_DNS_PAYLOAD_MAX + 1, 0);
    CHECK(program.run(frame(big)).status == EGRESSD_DNS_UNSUPPORTED);
    CHECK(dns::parse_response(big).status == EGRESSD_DNS_UNSUPPORTED);
}

TEST_CASE("dns parser: 100,000 random and mutated packets, the kernel and the reference agree on every one") {
    EGRESSD_REQUIRE_KERNEL_ENV();
    PacketProgram program;
    std::vector<Bytes> seeds;
    for (const Answer& a : real_answers()) seeds.push_back(a.payload);
    std::mt19937_64 random(20261202);
    const auto pick = [&](size_t n) { return static_cast<size_t>(random() % n); };
    size_t learned = 0, ok = 0, checked = 0;
    constexpr size_t kPackets = 100'000;
    for (size_t i = 0; i < kPackets; ++i) {
        Bytes p;
        if (i % 10 == 0) {  // random bytes with a response header
            p.resize(12 + pick(200));
            for (auto& b : p) b = static_cast<uint8_t>(random());
            p[2] = 0x81;
            p[3] = 0x80;
            p[4] = 0;
            p[5] = uint8_t(pick(3));
        } else {  // a real answer, mutated
            p = seeds[pick(seeds.size())];
            const size_t mutations = 1 + pick(4);
            for (size_t m = 0; m < mutations && !p.empty(); ++m) {
                switch (pick(6)) {
                    case 0: p[pick(p.size())] ^= uint8_t(1u << pick(8)); break;             // flip a bit
                    case 1: p[pick(p.size())] = static_cast<uint8_t>(random()); break;      // a random byte
                    case 2: p.resize(pick(p.size() + 1)); break;                           // cut
                    case 3: p.insert(p.begin() + long(pick(p.size() + 1)), uint8_t(random())); break;
                    case 4: {  // a compression pointer anywhere
                        const size_t at = pick(p.size());
                        p[at] = uint8_t(0xc0 | pick(4));
                        if (at + 1 < p.size()) p[at + 1] = uint8_t(pick(p.size() + 8));
                        break;
                    }
                    default: if (p.size() > 12) p[12 + pick(p.size() - 12)] = uint8_t(pick(64)); break;  // a label length
                }
            }
            if (p.empty()) p.push_back(0);
        }
        const dns::Response ref = dns::parse_response(p);
        const egressd_dns_parsed& kernel = program.run(frame(p, i % 2 == 1));
        std::string why;
        if (!same(kernel, ref, why)) {
            std::ostringstream hex;
            for (uint8_t b : p) hex << std::hex << (b >> 4) << (b & 15);
            FAIL_CHECK("packet " << i << " (" << hex.str() << "): " << why << " [" << describe(kernel) << "]");
            break;
        }
        ++checked;
        if (ref.status == EGRESSD_DNS_OK) ++ok;
        learned += ref.addresses.size();
    }
    CHECK(checked == kPackets);
    MESSAGE(checked << " packets: " << ok << " parsed whole, " << learned << " addresses learned");
    CHECK(ok > kPackets / 10);  // the mutations leave many answers whole: the learning path is exercised
    CHECK(learned > kPackets / 20);
}
