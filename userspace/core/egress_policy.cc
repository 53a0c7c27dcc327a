#include "core/egress_policy.h"

#include "egressd_abi.h"

#include <netinet/in.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <tuple>
#include <utility>

#include <fmt/format.h>

#include "core/files.h"
#include "core/yaml_input.h"

namespace egressd {

namespace {

namespace fs = std::filesystem;
using yaml_input::Field;
using yaml_input::ParseError;

constexpr std::array<std::string_view, 2> kEgressApiVersions = {"policy.flomesh.io/v1alpha1",
                                                          "policy.openservicemesh.io/v1alpha1"};
// udp and icmp are egressd extensions (FSM's sidecar proxies TCP only). icmp
// is ICMP echo (ping) of either family and has no port.
constexpr std::array<std::string_view, 6> kProtocols = {"tcp", "tcp-server-first", "http", "https", "udp", "icmp"};
constexpr std::array<std::string_view, 2> kMatchKinds = {"HTTPRouteGroup", "UpstreamTrafficSetting"};

// What spec.matches may refer to: namespace, kind, name.
using Target = std::tuple<std::string, std::string, std::string>;

// A spec.matches reference, and the note to give when nothing in the load defines it.
struct Reference {
    Target target;
    std::string note;
};

// One YAML document being read: words its messages, and holds its notes and
// references until the document is accepted.
struct Document {
    std::string file;
    int index = 0;      // 0-based
    std::string label;  // "document 3", then "document 3 (Egress ns/name)" once the name is known
    std::vector<std::string> notes;
    std::vector<Reference> references;

    // "<file>:<line>:<column>: <rest>" becomes "<file>:<line>:<column>: <label>: <rest>".
    std::string word(const std::string& message) const {
        const size_t end = message.find(": ", message.starts_with(file) ? file.size() : 0);
        if (end == std::string::npos) return fmt::format("{}: {}", label, message);
        return fmt::format("{}: {}{}", message.substr(0, end), label, message.substr(end));
    }
    void note(const Field& field, std::string_view why) { notes.push_back(word(field.message(why))); }
};

std::string lower(std::string text) {
    std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
    return text;
}

bool contains(std::span<const std::string_view> list, std::string_view value) {
    return std::find(list.begin(), list.end(), value) != list.end();
}

template <typename T>
void push_unique(std::vector<T>& list, T value) {
    if (std::find(list.begin(), list.end(), value) == list.end()) list.push_back(std::move(value));
}

std::string non_empty(const Field& field) {
    std::string text = field.string();
    if (text.empty()) field.fail("must not be empty");
    return text;
}

// `value` (the field's text, possibly normalised) when it is accepted.
std::string one_of(const Field& field, std::string value, std::span<const std::string_view> accepted) {
    if (!contains(accepted, value))
        field.fail(
            fmt::format("\"{}\" is not supported; expected one of {}", field.string(), fmt::join(accepted, ", ")));
    return value;
}

// A required list with at least one item.
std::vector<Field> at_least_one(const Field& list) {
    std::vector<Field> items = list.items();
    if (items.empty()) list.fail("must list at least one item");
    return items;
}

// metadata.namespace, "default" when absent (as Kubernetes does).
std::string namespace_of(const Field& top) {
    const Field ns = top.child("metadata").child("namespace");
    return ns.present() ? non_empty(ns) : "default";
}

// Why `name` is not a DNS name (labels of 1-63 characters a-z, 0-9, '-', not
// starting or ending with '-'; 253 characters at most), or "" when it is one.
std::string dns_name_error(std::string_view name) {
    if (name.size() > 253) return fmt::format("longer than 253 characters ({})", name.size());
    for (size_t start = 0;;) {
        const size_t end = std::min(name.find('.', start), name.size());
        const std::string_view label = name.substr(start, end - start);
        if (label.empty()) return "empty label";
        if (label.size() > 63) return fmt::format("label \"{}\" is longer than 63 characters", label);
        if (!std::all_of(label.begin(), label.end(),
                         [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'; }))
            return fmt::format("label \"{}\" has a character other than a-z, 0-9 and '-'", label);
        if (label.front() == '-' || label.back() == '-')
            return fmt::format("label \"{}\" starts or ends with '-'", label);
        if (end == name.size()) return "";
        start = end + 1;
    }
}

void read_host(const Field& field, EgressPolicy& policy, Document& doc) {
    const std::string written = field.string();
    std::string host = lower(written);
    if (host.ends_with('.')) host.pop_back();
    if (Cidr::parse(host))
        field.fail(fmt::format("\"{}\" is an IP address, not a host name; list it in ipAddresses", written));
    const bool wildcard = host.starts_with("*.");
    const std::string_view domain = std::string_view(host).substr(wildcard ? 2 : 0);
    if (domain.find('*') != std::string_view::npos)
        field.fail(fmt::format("\"{}\": a wildcard is accepted only as the whole first label, as in \"*.example.com\"",
                               written));
    if (const std::string why = dns_name_error(domain); !why.empty())
        field.fail(fmt::format("\"{}\" is not a valid host name: {}", written, why));
    if (wildcard) {
        doc.note(field,
                 fmt::format("wildcard host \"{}\" cannot be resolved by the agent: it allows only the addresses "
                             "the workloads learn from DNS answers",
                             host));
        push_unique(policy.wildcard_hosts, host);
    } else {
        push_unique(policy.hosts, host);
    }
}

PolicySource read_source(const Field& source, Document& doc) {
    const Field kind = source.required("kind");
    if (kind.string() != "ServiceAccount")
        kind.fail(fmt::format("\"{}\" is not supported; expected ServiceAccount (case-sensitive)", kind.string()));
    if (const Field mtls = source.child("mtls"); mtls.present())
        doc.note(mtls, "mtls ignored: egressd decides at connect() time");
    return PolicySource{non_empty(source.required("namespace")), non_empty(source.required("name"))};
}

PolicyPort read_port(const Field& port) {
    if (const Field protocol = port.child("protocol"); protocol.present() && lower(protocol.string()) == "icmp") {
        if (const Field number = port.child("number"); number.present() && number.integer() != 0)
            number.fail("must be 0 or absent with protocol icmp: ICMP echo has no port");
        return PolicyPort{0, "icmp", EGRESSD_PROTO_ICMP};
    }
    const Field number = port.required("number");
    const auto value = validate_port(number.integer());
    if (!value) number.fail(value.error().message);
    const Field protocol = port.required("protocol");
    const std::string name = one_of(protocol, lower(protocol.string()), kProtocols);
    return PolicyPort{*value, name, static_cast<uint8_t>(name == "udp" ? IPPROTO_UDP : IPPROTO_TCP)};
}

// What one document contributes to a load, worked out from the document alone so that it can be
// cached with its file. Exactly one of error, policy, target is set, or none (another kind: a note).
struct DocumentResult {
    std::string error;                   // not applied, and why
    SharedPolicy policy;                 // an Egress read without error (shared by every load while its file stays)
    // For `policy`: the error it becomes when an earlier document of the load has its namespace/name,
    // up to the reason (the message of metadata.name, worded for this document).
    std::string duplicate_prefix;
    std::optional<Target> target;  // an HTTPRouteGroup or UpstreamTrafficSetting
    // Applied with the document: not when it turns out to be a duplicate.
    std::vector<std::string> notes;
    std::vector<Reference> references;
};

EgressPolicy read_egress(const Field& top, Document& doc, std::string& duplicate_prefix) {
    EgressPolicy policy;
    const Field name = top.child("metadata").required("name");
    policy.name = non_empty(name);
    policy.namespace_ = namespace_of(top);
    doc.label = fmt::format("document {} (Egress {}/{})", doc.index + 1, policy.namespace_, policy.name);
    const Field api_version = top.required("apiVersion");
    policy.api_version = one_of(api_version, api_version.string(), kEgressApiVersions);
    policy.file = doc.file;
    policy.document = doc.index;

    const Field spec = top.required("spec");
    for (const Field& source : at_least_one(spec.required("sources")))
        push_unique(policy.sources, read_source(source, doc));
    for (const Cidr& cidr : spec.child("ipAddresses").cidrs()) push_unique(policy.ip_addresses, cidr);
    for (const Field& host : spec.child("hosts").items()) read_host(host, policy, doc);
    for (const Field& port : at_least_one(spec.required("ports"))) push_unique(policy.ports, read_port(port));
    const Field matches = spec.child("matches");
    for (const Field& match : matches.items()) {
        const Field kind = match.required("kind");
        const std::string kind_name = one_of(kind, kind.string(), kMatchKinds);
        const std::string target = non_empty(match.required("name"));
        policy.matches.push_back(fmt::format("{}/{}", kind_name, target));
        doc.references.push_back(
            {{policy.namespace_, kind_name, target},
             doc.word(match.message(fmt::format("{}/{} is not defined in namespace {} in the loaded documents",
                                                kind_name, target, policy.namespace_)))});
    }
    if (!policy.matches.empty())
        doc.note(matches, "L7 matches are delegated to the proxy; egressd enforces sources, destinations and ports");

    // The reason follows the field path, at the end of the message: the prefix is the message
    // without it. Whether it is needed is known only once the load is combined.
    duplicate_prefix = doc.word(name.message(""));
    return policy;
}

DocumentResult read_document(const Field& top, Document doc) {
    DocumentResult result;
    try {
        if (!top.node().is_mapping()) top.fail_expected("a mapping at the top level");
        const std::string kind = top.required("kind").string();
        if (kind == "Egress") {
            result.policy = std::make_shared<const EgressPolicy>(read_egress(top, doc, result.duplicate_prefix));
        } else if (contains(kMatchKinds, kind)) {
            // The name is checked before the namespace (the order the reported error has always had).
            std::string name = non_empty(top.child("metadata").required("name"));
            result.target.emplace(namespace_of(top), kind, std::move(name));
        } else {
            doc.note(top, fmt::format("kind {} ignored", kind));
        }
    } catch (const ParseError& e) {
        return DocumentResult{.error = doc.word(e.message)};
    }
    result.notes = std::move(doc.notes);
    result.references = std::move(doc.references);
    return result;
}

// Everything one file's text contributes, document by document; what PolicyDirLoader caches.
std::vector<DocumentResult> read_documents(std::string_view text, const std::string& file) {
    std::vector<Field> documents;
    try {
        documents = Field::load_all(text, file);
    } catch (const ParseError& e) {
        return {DocumentResult{.error = fmt::format("{} (no document of this file is applied)", e.message)}};
    }
    std::vector<DocumentResult> results;
    for (size_t i = 0; i < documents.size(); ++i) {
        if (documents[i].is_null()) continue;  // empty: only comments, or "---" twice
        results.push_back(
            read_document(documents[i], Document{file, static_cast<int>(i), fmt::format("document {}", i + 1)}));
    }
    return results;
}

// The steps of a load that need all its documents: in the order they are added, the first
// Egress with a namespace/name is kept and a later one is an error; references that no
// document of the load defines are notes; policies sorted.
class Combiner {
public:
    void add_error(std::string message) { set_.errors.push_back(std::move(message)); }

    void add(const std::vector<DocumentResult>& documents) {
        for (const DocumentResult& doc : documents) add(doc);
    }

    PolicySet finish() && {
        for (const Reference& reference : references_)
            if (!targets_.contains(reference.target)) set_.notes.push_back(reference.note);
        set_.policies.sort();
        return std::move(set_);
    }

private:
    void add(const DocumentResult& doc) {
        if (!doc.error.empty()) return add_error(doc.error);
        if (doc.policy) {
            const EgressPolicy& policy = *doc.policy;
            const auto [first, inserted] = first_.try_emplace({policy.namespace_, policy.name}, &policy);
            if (!inserted)
                return add_error(fmt::format(
                    "{}Egress {}/{} is already defined in {} document {}; the first one is kept", doc.duplicate_prefix,
                    policy.namespace_, policy.name, first->second->file, first->second->document + 1));
            set_.policies.push_back(doc.policy);
        }
        if (doc.target) targets_.insert(*doc.target);
        set_.notes.insert(set_.notes.end(), doc.notes.begin(), doc.notes.end());
        references_.insert(references_.end(), doc.references.begin(), doc.references.end());
    }

    PolicySet set_;
    // namespace/name: the one kept, an object set_.policies holds.
    std::map<std::pair<std::string_view, std::string_view>, const EgressPolicy*> first_;
    std::set<Target> targets_;
    std::vector<Reference> references_;
};

// The files load_policy_dir reads, in order; an error listing the directory is added to `combiner`.
std::vector<fs::path> policy_files(const fs::path& dir, Combiner& combiner) {
    std::vector<fs::path> files;
    std::error_code error;
    for (fs::directory_iterator it(dir, error), end; !error && it != end; it.increment(error)) {
        const fs::path& path = it->path();
        const std::string extension = path.extension().string();
        std::error_code ignored;  // a dangling link is not a directory: reading it reports it
        if (path.filename().string().starts_with('.') || (extension != ".yaml" && extension != ".yml") ||
            it->is_directory(ignored))
            continue;
        files.push_back(path);
    }
    if (error) combiner.add_error(Error{error.value(), fmt::format("reading {}", dir.string())}.describe());
    std::sort(files.begin(), files.end());
    return files;
}

}  // namespace

PolicySet parse_policy_documents(std::string_view yaml_text, const std::string& file_name) {
    Combiner combiner;
    combiner.add(read_documents(yaml_text, file_name));
    return std::move(combiner).finish();
}

PolicySet load_policy_dir(const fs::path& dir) { return PolicyDirLoader(dir).load(); }

// A file's bytes, and what they contribute to a load.
struct PolicyDirLoader::Cache {
    struct File {
        std::string text;
        std::vector<DocumentResult> documents;
        // Its state before it was read, if the file had settled then: the
        // same state again means the same bytes.
        std::optional<FileState> stamp;
    };
    std::map<fs::path, File> files;
};

// A file changed within `settled` before it was read may change again and
// keep its stamp: timestamps come from a clock that ticks in jiffies (up to
// 10 ms), and FAT's in 2 s.
PolicyDirLoader::PolicyDirLoader(fs::path dir, std::chrono::nanoseconds settled)
    : dir_(std::move(dir)), settled_(settled), cache_(std::make_unique<Cache>()) {}
PolicyDirLoader::~PolicyDirLoader() = default;
PolicyDirLoader::PolicyDirLoader(PolicyDirLoader&&) noexcept = default;
PolicyDirLoader& PolicyDirLoader::operator=(PolicyDirLoader&&) noexcept = default;

size_t PolicyDirLoader::files_cached() const { return cache_ ? cache_->files.size() : 0; }

PolicySet PolicyDirLoader::load(bool reread) {
    if (!cache_) cache_ = std::make_unique<Cache>();  // moved from
    Combiner combiner;
    std::map<fs::path, Cache::File> kept;  // the next cache: only the files read by this load
    files_parsed_last_load_ = files_read_last_load_ = 0;
    for (const fs::path& file : policy_files(dir_, combiner)) {
        // Stamped before the read: a change during it leaves another stamp.
        // A file stat() fails on is read, and reading it reports why.
        const Result<FileState> state = file_state(file);
        const std::optional<FileState> stamp = state ? std::optional(*state) : std::nullopt;
        auto cached = cache_->files.extract(file);
        if (!reread && cached && stamp && cached.mapped().stamp == stamp) {
            combiner.add(cached.mapped().documents);
            kept.insert(std::move(cached));
            continue;
        }
        const auto read_at = std::chrono::system_clock::now().time_since_epoch();
        auto text = read_file(file);
        if (!text) {
            combiner.add_error(text.error().describe());
            continue;
        }
        ++files_read_last_load_;
        Cache::File entry;
        if (cached && cached.mapped().text == *text) {
            entry = std::move(cached.mapped());
        } else {
            entry.documents = read_documents(*text, file.string());
            entry.text = std::move(*text);
            ++files_parsed_last_load_;
        }
        const bool settled = stamp && std::chrono::nanoseconds(stamp->changed_ns) < read_at - settled_;
        entry.stamp = settled ? stamp : std::nullopt;
        combiner.add(entry.documents);
        kept.emplace(file, std::move(entry));
    }
    cache_->files = std::move(kept);
    return std::move(combiner).finish();
}

}  // namespace egressd
