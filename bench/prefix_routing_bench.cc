// Prefix hit rate of 1, 2 and 4 kvserve replicas behind a router, measured on loopback.
//
// Starts R real `kvserve serve` processes, sends one workload of prompts that share long
// prefixes in groups (a "system prompt" per group plus a different question each time), routes
// each request with one of two policies, and reads the prefix cache counters back from every
// replica's /metrics:
//   round_robin   request i to replica i mod R (what a connection-level balancer approaches)
//   prefix_hash   the ring-hash algorithm of Envoy's ring_hash load balancer (xxHash64 of
//                 "host:port_i", ring of at least 1024 entries, first entry at or after the key,
//                 key = xxHash64 of the header value) applied to the x-kvserve-prefix-hash value
//                 that `kvserve client generate` sends (server/routing/prefix_hash.h)
// Hit rate = sum of kvserve_prefix_cache_hit_tokens_total / sum of
// kvserve_prefix_cache_query_tokens_total over the replicas.
//
//   build/bench/prefix_routing_bench [--replicas 1,2,4] [--groups 32] [--requests 256]
//       [--budget-mb 1.5] [--seed 1]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "kvserve/v1/generation.grpc.pb.h"
#include "server/routing/prefix_hash.h"

namespace {

using kvserve::server::PrefixHashHeaderValue;

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  const int port = ntohs(a.sin_port);
  close(fd);
  return port;
}

std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (write(fd, req.data(), req.size()) < 0) return "";
  std::string out;
  char buf[8192];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  close(fd);
  return out;
}

double Sample(const std::string& exposition, const std::string& series) {
  std::istringstream in(exposition);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::atof(line.c_str() + series.size() + 1);
  }
  return -1;
}

struct Replica {
  pid_t pid = -1;
  int grpc_port = 0;
  int metrics_port = 0;
  std::string log;
  std::unique_ptr<kvserve::v1::Generation::Stub> stub;
};

Replica StartReplica(const std::string& binary, const std::string& config, const std::string& model,
                     double budget_mb, int index) {
  Replica r;
  r.grpc_port = FreePort();
  do r.metrics_port = FreePort();
  while (r.metrics_port == r.grpc_port);
  r.log = "/tmp/prefix_routing_bench." + std::to_string(getpid()) + "." + std::to_string(index);
  std::vector<std::string> args = {
      binary,     "serve",
      "--config", config,
      "--set",    "model.path=" + model,
      "--set",    "server.address=127.0.0.1:" + std::to_string(r.grpc_port),
      "--set",    "metrics.address=127.0.0.1:" + std::to_string(r.metrics_port),
      "--set",    "kv_cache.budget_mb=" + std::to_string(budget_mb),
      "--set",    "engine.threads=1",
      "--set",    "http.address=",
      "--set",    "logging.level=warn"};
  std::fflush(stdout);
  r.pid = fork();
  if (r.pid == 0) {
    std::vector<char*> argv;
    for (std::string& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    freopen("/dev/null", "w", stdout);
    freopen(r.log.c_str(), "w", stderr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(r.grpc_port),
                                     grpc::InsecureChannelCredentials());
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(30))) {
    std::fprintf(stderr, "replica %d did not start; see %s\n", index, r.log.c_str());
    std::exit(1);
  }
  r.stub = kvserve::v1::Generation::NewStub(channel);
  return r;
}

void StopReplica(Replica& r) {
  kill(r.pid, SIGTERM);
  int status = 0;
  waitpid(r.pid, &status, 0);
  std::remove(r.log.c_str());
}

// Envoy's ring_hash: every host gets ceil(min_ring / hosts) entries xxHash64("host_i"); a key
// goes to the first entry at or after xxHash64(header value), wrapping around.
class Ring {
 public:
  Ring(const std::vector<std::string>& hosts, size_t min_ring_size = 1024) {
    const size_t per_host = (min_ring_size + hosts.size() - 1) / hosts.size();
    for (size_t h = 0; h < hosts.size(); ++h) {
      for (size_t i = 0; i < per_host; ++i) {
        const std::string key = hosts[h] + "_" + std::to_string(i);
        ring_.emplace_back(XXH64(key.data(), key.size(), 0), h);
      }
    }
    std::sort(ring_.begin(), ring_.end());
  }
  size_t Pick(const std::string& header_value) const {
    const uint64_t h = XXH64(header_value.data(), header_value.size(), 0);
    auto it = std::lower_bound(ring_.begin(), ring_.end(), std::make_pair(h, size_t{0}));
    if (it == ring_.end()) it = ring_.begin();
    return it->second;
  }

 private:
  std::vector<std::pair<uint64_t, size_t>> ring_;
};

std::vector<std::string> Stories(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::vector<std::string> stories;
  size_t pos = 0;
  const std::string sep = "<|endoftext|>";
  while (pos < text.size()) {
    size_t end = text.find(sep, pos);
    if (end == std::string::npos) end = text.size();
    std::string s = text.substr(pos, end - pos);
    const size_t first = s.find_first_not_of(" \n");
    if (first != std::string::npos) stories.push_back(s.substr(first));
    pos = end + sep.size();
  }
  return stories;
}

// Cuts `s` to at most n bytes at a space.
std::string Cut(const std::string& s, size_t n) {
  if (s.size() <= n) return s;
  const size_t space = s.rfind(' ', n);
  return s.substr(0, space == std::string::npos ? n : space);
}

std::string Flag(int argc, char** argv, const std::string& name, const std::string& def) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == "--" + name) return argv[i + 1];
  }
  return def;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string binary = Flag(argc, argv, "kvserve", KVSERVE_BINARY);
  const std::string config = Flag(argc, argv, "config", KVSERVE_SOURCE_DIR "/configs/server.yaml");
  const std::string model = Flag(argc, argv, "model", KVSERVE_MODELS_DIR "/stories260K.gguf");
  const std::string eval = Flag(argc, argv, "eval", KVSERVE_EVAL_DIR "/tinystories_valid_a.txt");
  const int groups = std::atoi(Flag(argc, argv, "groups", "32").c_str());
  const int requests = std::atoi(Flag(argc, argv, "requests", "256").c_str());
  const double budget_mb = std::atof(Flag(argc, argv, "budget-mb", "1.5").c_str());
  const unsigned seed = static_cast<unsigned>(std::atoi(Flag(argc, argv, "seed", "1").c_str()));
  std::vector<int> replica_counts;
  {
    std::stringstream ss(Flag(argc, argv, "replicas", "1,2,4"));
    std::string item;
    while (std::getline(ss, item, ',')) replica_counts.push_back(std::atoi(item.c_str()));
  }

  // Workload: group g's prefix is the first ~400 bytes of story g; each request adds the first
  // ~120 bytes of another story as its question. Groups drawn uniformly, fixed seed.
  const std::vector<std::string> stories = Stories(eval);
  if (static_cast<int>(stories.size()) < groups + 1) {
    std::fprintf(stderr, "%s: too few stories\n", eval.c_str());
    return 1;
  }
  std::mt19937 rng(seed);
  std::vector<std::string> prompts;
  std::vector<int> group_of;
  for (int i = 0; i < requests; ++i) {
    const int g = static_cast<int>(rng() % static_cast<unsigned>(groups));
    const std::string& q = stories[groups + rng() % (stories.size() - groups)];
    prompts.push_back(Cut(stories[g], 400) + "\n\nQuestion: " + Cut(q, 120));
    group_of.push_back(g);
  }

  std::printf(
      "workload: %d requests, %d prefix groups (prefix ~400 bytes, question ~120 bytes), "
      "max_tokens 2, KV budget %.2f MiB per replica, kv_cache.format from %s\n",
      requests, groups, budget_mb, config.c_str());
  std::printf("%-8s %-12s %10s %12s %10s %9s  %s\n", "replicas", "routing", "hit_tokens",
              "query_tokens", "hit_rate", "wall_s", "requests per replica");
  for (int replicas : replica_counts) {
    for (const std::string policy : {"round_robin", "prefix_hash"}) {
      std::vector<Replica> fleet;
      std::vector<std::string> hosts;
      for (int r = 0; r < replicas; ++r) {
        fleet.push_back(StartReplica(binary, config, model, budget_mb, r));
        hosts.push_back("127.0.0.1:" + std::to_string(fleet.back().grpc_port));
      }
      const Ring ring(hosts);
      std::vector<int> sent(replicas, 0);
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < requests; ++i) {
        const std::string header = PrefixHashHeaderValue(prompts[i]);
        const size_t target =
            policy == "round_robin" ? static_cast<size_t>(i % replicas) : ring.Pick(header);
        kvserve::v1::GenerateRequest req;
        req.set_text(prompts[i]);
        req.set_max_tokens(2);
        req.mutable_sampling()->set_temperature(0);
        kvserve::v1::CompleteResponse resp;
        grpc::ClientContext ctx;
        ctx.AddMetadata(kvserve::server::kPrefixHashHeader, header);
        const grpc::Status st = fleet[target].stub->Complete(&ctx, req, &resp);
        if (!st.ok()) {
          std::fprintf(stderr, "request %d: %s\n", i, st.error_message().c_str());
          return 1;
        }
        ++sent[target];
      }
      const double wall =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      double hit = 0, query = 0;
      for (Replica& r : fleet) {
        const std::string m = HttpGet(r.metrics_port, "/metrics");
        hit += Sample(m, "kvserve_prefix_cache_hit_tokens_total");
        query += Sample(m, "kvserve_prefix_cache_query_tokens_total");
      }
      std::string shares;
      for (int s : sent) shares += std::to_string(s) + " ";
      std::printf("%-8d %-12s %10.0f %12.0f %9.1f%% %9.2f  %s\n", replicas, policy.c_str(), hit,
                  query, 100.0 * hit / query, wall, shares.c_str());
      std::fflush(stdout);
      for (Replica& r : fleet) StopReplica(r);
    }
  }
  return 0;
}
