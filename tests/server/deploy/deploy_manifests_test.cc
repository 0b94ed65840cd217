// The deployment files in deploy/ and the Dockerfile, read as a tool would: YAML parses,
// every reference (files, ConfigMaps, Secrets, claims, Services, ports by name, scale targets,
// compose services, provisioning paths) resolves, and ports, paths and the drain timeout agree
// with configs/server.yaml as the server itself loads it. The container's --set overrides are
// loaded by the real config loader.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "gtest/gtest.h"
#include "server/config/server_config.h"
#include "server/routing/prefix_hash.h"
#include "tests/server/grpc/server_process.h"
#include "yaml-cpp/yaml.h"

namespace kvserve::server::testing {
namespace {

namespace fs = std::filesystem;

std::string Root() { return SourceDir(); }

// Seconds of margin between the end of the drain and the kill (SIGKILL after the grace period).
constexpr double kGraceMarginSeconds = 5;
// grpc.health.v1 service name of the liveness check (server/grpc/liveness_watchdog.h).
constexpr char kLivenessService[] = "kvserve.liveness";
// The HTTP API's port in every container (configs/server.yaml listens on 127.0.0.1:8080).
constexpr int kHttpPort = 8080;
// The per-token latency of one decoding request when the batch is full, and an allowance for the
// prefill of the longest prompt, measured as deploy/README.md ("Drain and the longest request")
// describes. The drain timeout must cover max_tokens such steps plus the prefill.
constexpr double kSecondsPerTokenFullBatch = 0.045;
constexpr double kPrefillAllowanceSeconds = 5;

// sha256 of a file, lower-case hex (sha256sum).
std::string Sha256(const std::string& path);

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Every document of a YAML file (a parse error fails the test, naming the file and line).
std::vector<YAML::Node> LoadAll(const std::string& relative) {
  try {
    return YAML::LoadAllFromFile(Root() + "/" + relative);
  } catch (const YAML::Exception& e) {
    ADD_FAILURE() << relative << ":" << e.mark.line + 1 << ": " << e.what();
    return {};
  }
}
YAML::Node Load(const std::string& relative) {
  std::vector<YAML::Node> docs = LoadAll(relative);
  EXPECT_EQ(docs.size(), 1u) << relative;
  return docs.empty() ? YAML::Node() : docs[0];
}

int PortOf(const std::string& address) {
  int port = 0;
  const size_t colon = address.rfind(':');
  EXPECT_NE(colon, std::string::npos) << address;
  EXPECT_TRUE(absl::SimpleAtoi(address.substr(colon + 1), &port)) << address;
  return port;
}

// `--set key=value` pairs of an argument list.
std::map<std::string, std::string> SetFlags(const std::vector<std::string>& args) {
  std::map<std::string, std::string> sets;
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] != "--set") continue;
    const size_t eq = args[i + 1].find('=');
    sets[args[i + 1].substr(0, eq)] = args[i + 1].substr(eq + 1);
  }
  return sets;
}

std::vector<std::string> Strings(const YAML::Node& list) {
  std::vector<std::string> out;
  for (const YAML::Node& n : list) out.push_back(n.as<std::string>());
  return out;
}

// configs/server.yaml as the server loads it.
class DeployTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto config = LoadServerConfig(Root() + "/configs/server.yaml");
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    grpc_port_ = PortOf(config_.address);
    metrics_port_ = PortOf(config_.metrics_address);
    ASSERT_EQ(grpc_port_, 50051);
    ASSERT_EQ(metrics_port_, 9464);
  }

  // The container's overrides, loaded over configs/server.yaml by the real loader with the
  // container paths mapped to files here; they must keep the ports.
  void ExpectContainerSetsLoad(const std::map<std::string, std::string>& sets,
                               const std::string& where) {
    ScratchDir dir;
    const std::string keys = dir.Write("api-keys", "key-one\n");
    std::vector<std::string> overrides;
    for (auto [key, value] : sets) {
      if (absl::StartsWith(value, "/models/")) {
        value = fs::path(ModelPath()).parent_path().string() + value.substr(7);
      } else if (key == "server.api_keys_file") {
        EXPECT_EQ(value, "/etc/kvserve/secrets/api-keys") << where;
        value = keys;
      } else if (key == "server.tls.cert_file" || key == "server.tls.key_file") {
        EXPECT_TRUE(absl::StartsWith(value, "/etc/kvserve/tls/")) << where << ": " << value;
        value = dir.Write(fs::path(value).filename().string(), "PEM\n");
      }
      overrides.push_back(absl::StrCat(key, "=", value));
    }
    auto c = LoadServerConfig(Root() + "/configs/server.yaml", overrides);
    ASSERT_TRUE(c.ok()) << where << ": " << c.status();
    EXPECT_EQ(PortOf(c->address), grpc_port_) << where;
    EXPECT_EQ(PortOf(c->metrics_address), metrics_port_) << where;
    EXPECT_EQ(c->http.address, "0.0.0.0:8080") << where << ": the HTTP API must be reachable";
    EXPECT_TRUE(absl::StartsWith(c->address, "0.0.0.0:"))
        << where << ": not reachable from outside";
    EXPECT_FALSE(c->api_keys_file.empty()) << where << ": every interface needs API keys";
  }

  ServerConfig config_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
};

// ---- Dockerfile -----------------------------------------------------------------------------

// The exec-form JSON array of a Dockerfile instruction (continuation lines joined); for
// HEALTHCHECK, the array of its CMD.
std::vector<std::string> DockerfileArray(const std::string& text, const std::string& instr) {
  std::string joined = absl::StrReplaceAll(text, {{"\\\n", " "}});
  for (absl::string_view line : absl::StrSplit(joined, '\n')) {
    if (!absl::StartsWith(line, instr + " ")) continue;
    const size_t open = line.find('[');
    if (open == absl::string_view::npos) return {};
    return Strings(YAML::Load(std::string(line.substr(open))));
  }
  return {};
}

TEST_F(DeployTest, DockerfileAgreesWithTheConfig) {
  const std::string text = ReadText(Root() + "/Dockerfile");
  for (const char* stage :
       {" AS build\n", " AS runtime\n", " AS build-cuda\n", " AS runtime-cuda\n"}) {
    EXPECT_TRUE(absl::StrContains(text, stage)) << "no stage" << stage;
  }
  EXPECT_TRUE(absl::StrContains(text, "FROM ${DEBIAN_IMAGE} AS build"));
  EXPECT_TRUE(absl::StrContains(text, "ARG CUDA_DEVEL_IMAGE=nvidia/cuda:"));
  EXPECT_TRUE(absl::StrContains(text, "RUN bash scripts/install-deps.sh"));
  EXPECT_TRUE(absl::StrContains(text, absl::StrCat("EXPOSE ", grpc_port_, " ", metrics_port_)));
  EXPECT_TRUE(absl::StrContains(text, "USER 10001:10001"));
  const std::vector<std::string> entry = DockerfileArray(text, "ENTRYPOINT");
  EXPECT_EQ(entry, (std::vector<std::string>{"/usr/local/bin/kvserve", "serve", "--config",
                                             "/etc/kvserve/server.yaml"}));
  const std::vector<std::string> health = DockerfileArray(text, "HEALTHCHECK");
  ASSERT_FALSE(health.empty()) << "no HEALTHCHECK in exec form";
  EXPECT_EQ(health[1], "client");
  EXPECT_EQ(health[2], "health");
  EXPECT_EQ(PortOf(health[4]), grpc_port_);
  ExpectContainerSetsLoad(SetFlags(DockerfileArray(text, "CMD")), "Dockerfile CMD");
}

// ---- docker-compose -------------------------------------------------------------------------

// A compose bind source with ${VAR:-default} / ${VAR:?message} resolved to its default; "" when
// the variable is required.
std::string BindSource(const std::string& source) {
  if (!absl::StartsWith(source, "${")) return source;
  const size_t def = source.find(":-");
  if (def == std::string::npos) return "";
  return source.substr(def + 2, source.find('}') - def - 2);
}

TEST_F(DeployTest, ComposeReferencesResolveAndAgreeWithTheConfig) {
  const YAML::Node compose = Load("deploy/docker-compose.yml");
  const YAML::Node services = compose["services"];
  ASSERT_TRUE(services.IsMap());
  for (const char* s : {"kvserve", "prometheus", "grafana"}) {
    ASSERT_TRUE(services[s]) << "no service " << s;
  }
  const fs::path deploy = fs::path(Root()) / "deploy";
  const YAML::Node kv = services["kvserve"];
  const fs::path context = deploy / kv["build"]["context"].as<std::string>();
  EXPECT_TRUE(fs::exists(context / kv["build"]["dockerfile"].as<std::string>()));
  EXPECT_TRUE(absl::StrContains(ReadText((context / "Dockerfile").string()),
                                " AS " + kv["build"]["target"].as<std::string>() + "\n"));
  // Every bind source exists (relative to deploy/), every named volume is declared.
  std::map<std::string, std::string> mounts;  // container path -> host path
  for (const auto& service : services) {
    const std::string name = service.first.as<std::string>();
    for (const YAML::Node& v : service.second["volumes"]) {
      std::vector<std::string> parts = absl::StrSplit(v.as<std::string>(), ':');
      // ${VAR:-x} contains a ':' of its own.
      if (absl::StartsWith(parts[0], "${")) {
        parts[0] += ":" + parts[1];
        parts.erase(parts.begin() + 1);
      }
      ASSERT_GE(parts.size(), 2u) << name << ": " << v.as<std::string>();
      const std::string source = BindSource(parts[0]);
      if (absl::StartsWith(parts[0], ".") || absl::StartsWith(parts[0], "${")) {
        if (!source.empty()) {
          EXPECT_TRUE(fs::exists(deploy / source)) << name << ": no " << (deploy / source);
          mounts[name + ":" + parts[1]] = (deploy / source).lexically_normal().string();
        } else {
          mounts[name + ":" + parts[1]] = "";
        }
      } else {
        EXPECT_TRUE(compose["volumes"][parts[0]]) << name << ": undeclared volume " << parts[0];
      }
    }
  }
  EXPECT_EQ(mounts["kvserve:/etc/kvserve/server.yaml"],
            (fs::path(Root()) / "configs/server.yaml").lexically_normal().string());
  EXPECT_TRUE(mounts.contains("kvserve:/models"));
  EXPECT_TRUE(mounts.contains("kvserve:/etc/kvserve/secrets/api-keys"));
  // Published ports: the config's ports.
  std::set<int> published;
  for (const YAML::Node& p : kv["ports"]) {
    published.insert(PortOf(p.as<std::string>()));
  }
  EXPECT_EQ(published, (std::set<int>{grpc_port_, metrics_port_, kHttpPort}));
  ExpectContainerSetsLoad(SetFlags(Strings(kv["command"])), "compose kvserve command");
  const std::vector<std::string> health = Strings(kv["healthcheck"]["test"]);
  EXPECT_EQ(health[2], "client");
  EXPECT_EQ(health[3], "health");
  EXPECT_EQ(PortOf(health[5]), grpc_port_);
  // docker stop waits stop_grace_period, then kills: the whole drain and a margin must fit.
  EXPECT_GE(std::stod(kv["stop_grace_period"].as<std::string>()),
            config_.drain_timeout_seconds + kGraceMarginSeconds);

  // Prometheus scrapes the kvserve service on the metrics port.
  const YAML::Node prom = Load("deploy/prometheus/prometheus.yml");
  bool scrapes = false;
  for (const YAML::Node& job : prom["scrape_configs"]) {
    for (const YAML::Node& sc : job["static_configs"]) {
      for (const YAML::Node& t : sc["targets"]) {
        scrapes |= t.as<std::string>() == absl::StrCat("kvserve:", metrics_port_);
      }
    }
  }
  EXPECT_TRUE(scrapes) << "deploy/prometheus/prometheus.yml does not scrape kvserve:"
                       << metrics_port_;
  EXPECT_EQ(mounts["prometheus:/etc/prometheus/prometheus.yml"],
            (deploy / "prometheus/prometheus.yml").lexically_normal().string());
  // Its rule files are mounted beside it.
  for (const YAML::Node& f : prom["rule_files"]) {
    EXPECT_EQ(mounts["prometheus:/etc/prometheus/" + f.as<std::string>()],
              (deploy / "prometheus" / f.as<std::string>()).lexically_normal().string());
  }
  EXPECT_GE(prom["rule_files"].size(), 1u);

  // Grafana: the provisioned data source is the compose Prometheus; the provider's path is where
  // the dashboards are mounted.
  const YAML::Node ds = Load("deploy/grafana/provisioning/datasources/prometheus.yaml");
  const std::string url = ds["datasources"][0]["url"].as<std::string>();
  bool prometheus_port = false;
  for (const YAML::Node& p : services["prometheus"]["ports"]) {
    prometheus_port |= absl::StrCat("http://prometheus:", PortOf(p.as<std::string>())) == url;
  }
  EXPECT_TRUE(prometheus_port) << url;
  const YAML::Node providers = Load("deploy/grafana/provisioning/dashboards/kvserve.yaml");
  const std::string dashboards = providers["providers"][0]["options"]["path"].as<std::string>();
  EXPECT_EQ(mounts["grafana:" + dashboards],
            (deploy / "grafana/dashboards").lexically_normal().string());
  EXPECT_EQ(mounts["grafana:/etc/grafana/provisioning/datasources"],
            (deploy / "grafana/provisioning/datasources").lexically_normal().string());
  EXPECT_EQ(mounts["grafana:/etc/grafana/provisioning/dashboards"],
            (deploy / "grafana/provisioning/dashboards").lexically_normal().string());
  EXPECT_TRUE(fs::exists(deploy / "grafana/dashboards/kvserve.json"));
}

// ---- Kubernetes -----------------------------------------------------------------------------

struct Objects {
  std::map<std::string, YAML::Node> by_kind_name;  // "Kind/name"
  YAML::Node Get(const std::string& kind, const std::string& name) const {
    auto it = by_kind_name.find(kind + "/" + name);
    return it == by_kind_name.end() ? YAML::Node() : it->second;
  }
};

// The objects of a kustomization directory (resources recursively; files must exist).
void Kustomize(const std::string& dir, Objects& out) {
  const YAML::Node k = Load(dir + "/kustomization.yaml");
  ASSERT_EQ(k["kind"].as<std::string>(), "Kustomization") << dir;
  for (const YAML::Node& r : k["resources"]) {
    const std::string path = dir + "/" + r.as<std::string>();
    if (fs::is_directory(Root() + "/" + path)) {
      ASSERT_TRUE(fs::exists(Root() + "/" + path + "/kustomization.yaml")) << path;
      Kustomize(path, out);
      continue;
    }
    ASSERT_TRUE(fs::exists(Root() + "/" + path)) << dir << ": missing resource " << path;
    for (const YAML::Node& doc : LoadAll(path)) {
      const std::string key =
          doc["kind"].as<std::string>() + "/" + doc["metadata"]["name"].as<std::string>();
      EXPECT_FALSE(out.by_kind_name.contains(key)) << "duplicate " << key;
      out.by_kind_name[key] = doc;
    }
  }
  for (const YAML::Node& g : k["configMapGenerator"]) {
    for (const YAML::Node& f : g["files"]) {
      ASSERT_TRUE(fs::exists(Root() + "/" + dir + "/" + f.as<std::string>())) << dir;
    }
    YAML::Node cm;
    cm["kind"] = "ConfigMap";
    cm["metadata"]["name"] = g["name"];
    out.by_kind_name["ConfigMap/" + g["name"].as<std::string>()] = cm;
  }
}

bool LabelsMatch(const YAML::Node& selector, const YAML::Node& labels) {
  if (!selector.IsMap() || selector.size() == 0) return false;
  for (const auto& kv : selector) {
    if (!labels[kv.first.as<std::string>()] ||
        labels[kv.first.as<std::string>()].as<std::string>() != kv.second.as<std::string>()) {
      return false;
    }
  }
  return true;
}

class KubernetesTest : public DeployTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(KubernetesTest, ReferencesResolveAndAgreeWithTheConfig) {
  const std::string variant = GetParam();
  Objects objects;
  Kustomize(absl::StrCat("deploy/k8s/", variant), objects);
  const YAML::Node dep = objects.Get("Deployment", "kvserve");
  ASSERT_TRUE(dep) << variant << ": no Deployment kvserve";
  const YAML::Node pod = dep["spec"]["template"];
  EXPECT_TRUE(LabelsMatch(dep["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"]));
  const YAML::Node spec = pod["spec"];
  ASSERT_EQ(spec["containers"].size(), 1u);
  const YAML::Node c = spec["containers"][0];

  // Ports by name, the config's numbers.
  std::map<std::string, int> ports;
  for (const YAML::Node& p : c["ports"]) {
    ports[p["name"].as<std::string>()] = p["containerPort"].as<int>();
  }
  EXPECT_EQ(ports["grpc"], grpc_port_);
  EXPECT_EQ(ports["metrics"], metrics_port_);
  EXPECT_EQ(ports["http"], kHttpPort);
  const std::map<std::string, std::string> sets = SetFlags(Strings(c["args"]));
  ExpectContainerSetsLoad(sets, variant + " Deployment args");

  // Health probes: grpc.health.v1 on the gRPC port; readiness asks about the whole server
  // (NOT_SERVING while draining), liveness about kvserve.liveness (NOT_SERVING only when the
  // engine loop is wedged; it stays SERVING through a drain). With TLS the kubelet's gRPC probe
  // cannot connect: the image's client runs instead, trusting the Secret's CA.
  const bool tls = sets.contains("server.tls.cert_file");
  for (const char* probe : {"startupProbe", "readinessProbe", "livenessProbe"}) {
    const std::string service = std::string(probe) == "livenessProbe" ? kLivenessService : "";
    if (!tls) {
      ASSERT_TRUE(c[probe]["grpc"]) << probe;
      EXPECT_EQ(c[probe]["grpc"]["port"].as<int>(), grpc_port_) << probe;
      EXPECT_EQ(c[probe]["grpc"]["service"] ? c[probe]["grpc"]["service"].as<std::string>() : "",
                service)
          << probe;
      continue;
    }
    ASSERT_TRUE(c[probe]["exec"]) << probe;
    const std::vector<std::string> cmd = Strings(c[probe]["exec"]["command"]);
    ASSERT_GE(cmd.size(), 3u) << probe;
    EXPECT_EQ(cmd[0], "/usr/local/bin/kvserve") << probe;
    EXPECT_EQ(cmd[1], "client") << probe;
    EXPECT_EQ(cmd[2], "health") << probe;
    std::map<std::string, std::string> flag;
    for (size_t i = 3; i + 1 < cmd.size(); i += 2) flag[cmd[i]] = cmd[i + 1];
    EXPECT_EQ(flag["--addr"], absl::StrCat("localhost:", grpc_port_)) << probe;
    EXPECT_EQ(flag["--service"], service) << probe;
    EXPECT_EQ(fs::path(flag["--tls-ca"]).parent_path(),
              fs::path(sets.at("server.tls.cert_file")).parent_path())
        << probe;
    EXPECT_EQ(fs::path(flag["--tls-ca"]).filename(), "ca.crt") << probe;
    EXPECT_LE(std::stod(flag["--timeout"]), c[probe]["timeoutSeconds"].as<double>(1)) << probe;
  }
  // The grace period covers the preStop pause, the whole drain and a margin; the drain covers
  // the longest request the config allows (ExpectDrainFitsTheLongestRequest).
  const std::vector<std::string> pre_stop = Strings(c["lifecycle"]["preStop"]["exec"]["command"]);
  ASSERT_EQ(pre_stop.size(), 2u);
  EXPECT_GE(spec["terminationGracePeriodSeconds"].as<double>(),
            std::stod(pre_stop[1]) + config_.drain_timeout_seconds + kGraceMarginSeconds);
  // No replica count of its own: the autoscaler owns it.
  EXPECT_FALSE(dep["spec"]["replicas"]) << variant << ": `replicas` fights the autoscaler";
  // A config change rolls the pods: the template carries the config's checksum.
  EXPECT_EQ(pod["metadata"]["annotations"]["kvserve.io/config-sha256"].as<std::string>(""),
            Sha256(Root() + "/configs/server.yaml"))
      << "run deploy/scripts/k8s-configmap.sh";
  EXPECT_EQ(pod["metadata"]["annotations"]["prometheus.io/port"].as<std::string>(),
            std::to_string(metrics_port_));
  EXPECT_EQ(spec["securityContext"]["runAsUser"].as<int>(), 10001);
  EXPECT_TRUE(spec["securityContext"]["runAsNonRoot"].as<bool>());

  // Volumes resolve: the ConfigMap (configs/server.yaml byte for byte), the claim, the Secret.
  std::map<std::string, YAML::Node> volumes;
  for (const YAML::Node& v : spec["volumes"]) volumes[v["name"].as<std::string>()] = v;
  std::map<std::string, std::string> mount_of;  // volume -> mount path
  for (const YAML::Node& m : c["volumeMounts"]) {
    const std::string name = m["name"].as<std::string>();
    ASSERT_TRUE(volumes.contains(name)) << "mount of undeclared volume " << name;
    mount_of[name] = m["mountPath"].as<std::string>();
  }
  for (const auto& [name, v] : volumes) {
    if (v["configMap"]) {
      const YAML::Node cm = objects.Get("ConfigMap", v["configMap"]["name"].as<std::string>());
      ASSERT_TRUE(cm) << "no ConfigMap " << v["configMap"]["name"];
      EXPECT_EQ(mount_of[name], "/etc/kvserve/server.yaml");
      EXPECT_TRUE(cm["data"]["server.yaml"].as<std::string>() ==
                  ReadText(Root() + "/configs/server.yaml"))
          << "deploy/k8s/base/configmap.yaml differs from configs/server.yaml: run "
             "deploy/scripts/k8s-configmap.sh";
    } else if (v["persistentVolumeClaim"]) {
      EXPECT_TRUE(objects.Get("PersistentVolumeClaim",
                              v["persistentVolumeClaim"]["claimName"].as<std::string>()));
      EXPECT_TRUE(absl::StartsWith(sets.at("model.path"), mount_of[name] + "/"));
    } else if (v["secret"] && name == "tls") {
      // A kubernetes.io/tls Secret (cert-manager's keys), mounted as a folder.
      const std::string secret = v["secret"]["secretName"].as<std::string>();
      EXPECT_TRUE(absl::StrContains(ReadText(Root() + "/deploy/README.md"), secret));
      EXPECT_EQ(sets.at("server.tls.cert_file"), mount_of[name] + "/tls.crt");
      EXPECT_EQ(sets.at("server.tls.key_file"), mount_of[name] + "/tls.key");
      const YAML::Node cert = Load("deploy/k8s/" + variant + "/certificate.yaml");
      EXPECT_EQ(cert["kind"].as<std::string>(), "Certificate");
      EXPECT_EQ(cert["spec"]["secretName"].as<std::string>(), secret);
      std::set<std::string> names;
      for (const YAML::Node& n : cert["spec"]["dnsNames"]) names.insert(n.as<std::string>());
      EXPECT_TRUE(names.contains("localhost")) << "the probes connect to localhost";
      EXPECT_TRUE(names.contains("kvserve"));
      EXPECT_TRUE(names.contains("kvserve-headless"));
    } else if (v["secret"]) {
      // Created by the operator (deploy/README.md says how). Mounted as a folder, not with
      // subPath, so that an updated Secret reaches the pod and the server's poll of
      // server.api_keys_file picks the new keys up.
      EXPECT_TRUE(absl::StrContains(ReadText(Root() + "/deploy/README.md"),
                                    v["secret"]["secretName"].as<std::string>()));
      EXPECT_EQ(sets.at("server.api_keys_file"), mount_of[name] + "/api-keys");
      for (const YAML::Node& m : c["volumeMounts"]) {
        if (m["name"].as<std::string>() == name) {
          EXPECT_FALSE(m["subPath"]) << name;
        }
      }
    } else {
      ADD_FAILURE() << "unexpected volume " << name;
    }
  }

  // Services select the pods and target named container ports with the same numbers.
  for (const char* name : {"kvserve", "kvserve-headless"}) {
    const YAML::Node svc = objects.Get("Service", name);
    ASSERT_TRUE(svc) << name;
    EXPECT_TRUE(LabelsMatch(svc["spec"]["selector"], pod["metadata"]["labels"])) << name;
    for (const YAML::Node& p : svc["spec"]["ports"]) {
      const std::string target = p["targetPort"].as<std::string>();
      ASSERT_TRUE(ports.contains(target)) << name << ": no container port " << target;
      EXPECT_EQ(p["port"].as<int>(), ports[target]) << name;
    }
  }
  EXPECT_EQ(objects.Get("Service", "kvserve-headless")["spec"]["clusterIP"].as<std::string>(),
            "None");
  // The ServiceMonitor selects the Service and names its metrics port.
  const YAML::Node sm = objects.Get("ServiceMonitor", "kvserve");
  const YAML::Node svc = objects.Get("Service", "kvserve");
  EXPECT_TRUE(LabelsMatch(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]));
  // The label a Prometheus Operator's serviceMonitorSelector / ruleSelector matches
  // (kube-prometheus-stack: release=<Helm release>), on the ServiceMonitor and the rules alike.
  ASSERT_TRUE(sm["metadata"]["labels"]["release"]) << "ServiceMonitor without a release label";
  const YAML::Node rule = objects.Get("PrometheusRule", "kvserve");
  ASSERT_TRUE(rule) << "no PrometheusRule kvserve";
  EXPECT_EQ(rule["metadata"]["labels"]["release"].as<std::string>(""),
            sm["metadata"]["labels"]["release"].as<std::string>());
  // Its groups are deploy/prometheus/alerts.yml's.
  EXPECT_EQ(YAML::Dump(rule["spec"]["groups"]),
            YAML::Dump(Load("deploy/prometheus/alerts.yml")["groups"]))
      << "run deploy/scripts/k8s-configmap.sh";
  std::set<std::string> svc_ports;
  for (const YAML::Node& p : svc["spec"]["ports"]) svc_ports.insert(p["name"].as<std::string>());
  EXPECT_TRUE(svc_ports.contains(sm["spec"]["endpoints"][0]["port"].as<std::string>()));
  EXPECT_EQ(svc["metadata"]["annotations"]["prometheus.io/port"].as<std::string>(),
            std::to_string(metrics_port_));

  // The autoscaler scales this Deployment on metrics the server exports or the adapter derives.
  const YAML::Node hpa = objects.Get("HorizontalPodAutoscaler", "kvserve");
  EXPECT_EQ(hpa["spec"]["scaleTargetRef"]["kind"].as<std::string>(), "Deployment");
  EXPECT_EQ(hpa["spec"]["scaleTargetRef"]["name"].as<std::string>(), "kvserve");
  const std::string docs = ReadText(Root() + "/docs/metrics.md");
  const YAML::Node rules = Load("deploy/k8s/prometheus-adapter-rules.yaml");
  std::set<std::string> adapted;
  for (const YAML::Node& r : rules["rules"]) {
    adapted.insert(r["name"]["as"].as<std::string>());
    const std::string series = r["name"]["matches"].as<std::string>();
    EXPECT_TRUE(absl::StrContains(docs, "| `" + series + "` |")) << series;
  }
  ASSERT_GE(hpa["spec"]["metrics"].size(), 1u);
  for (const YAML::Node& m : hpa["spec"]["metrics"]) {
    EXPECT_TRUE(adapted.contains(m["pods"]["metric"]["name"].as<std::string>()))
        << m["pods"]["metric"]["name"] << " has no prometheus-adapter rule";
  }

  // The autoscaler keeps at least two replicas, so that one serves while another drains or is
  // evicted; the disruption budget lets one go at a time and never all.
  const int min_replicas = hpa["spec"]["minReplicas"].as<int>();
  EXPECT_GE(min_replicas, 2);
  EXPECT_LE(min_replicas, hpa["spec"]["maxReplicas"].as<int>());
  const YAML::Node pdb = objects.Get("PodDisruptionBudget", "kvserve");
  ASSERT_TRUE(pdb) << variant << ": no PodDisruptionBudget";
  EXPECT_TRUE(LabelsMatch(pdb["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"]));
  if (pdb["spec"]["maxUnavailable"]) {
    EXPECT_GE(pdb["spec"]["maxUnavailable"].as<int>(), 1) << "a budget of 0 blocks node drains";
    EXPECT_LT(pdb["spec"]["maxUnavailable"].as<int>(), min_replicas);
  } else {
    EXPECT_LT(pdb["spec"]["minAvailable"].as<int>(), min_replicas);
    EXPECT_GE(pdb["spec"]["minAvailable"].as<int>(), 1);
  }

  // The network policy selects the pods and admits only their named ports.
  const YAML::Node np = objects.Get("NetworkPolicy", "kvserve");
  ASSERT_TRUE(np) << variant << ": no NetworkPolicy";
  EXPECT_TRUE(LabelsMatch(np["spec"]["podSelector"]["matchLabels"], pod["metadata"]["labels"]));
  std::set<std::string> admitted;
  for (const YAML::Node& rule : np["spec"]["ingress"]) {
    ASSERT_TRUE(rule["from"]) << "an ingress rule without `from` admits everyone";
    for (const YAML::Node& p : rule["ports"]) {
      const std::string port = p["port"].as<std::string>();
      EXPECT_TRUE(ports.contains(port)) << "no container port " << port;
      admitted.insert(port);
    }
  }
  EXPECT_EQ(admitted, (std::set<std::string>{"grpc", "http", "metrics"}));
  // The router's pods are among those admitted to gRPC.
  Objects router;
  Kustomize("deploy/envoy", router);
  bool router_admitted = false;
  for (const YAML::Node& from : np["spec"]["ingress"][0]["from"]) {
    router_admitted |= LabelsMatch(
        from["podSelector"]["matchLabels"],
        router.Get("Deployment", "kvserve-router")["spec"]["template"]["metadata"]["labels"]);
  }
  EXPECT_TRUE(router_admitted);

  // Resources: the forward pass runs on the CPU; the compute threads match the CPU request.
  const YAML::Node res = c["resources"];
  EXPECT_FALSE(res["limits"]["nvidia.com/gpu"]);
  EXPECT_FALSE(res["requests"]["nvidia.com/gpu"]);
  EXPECT_EQ(sets.at("engine.threads"), res["requests"]["cpu"].as<std::string>());
  EXPECT_TRUE(res["requests"]["memory"]);
}

INSTANTIATE_TEST_SUITE_P(Variants, KubernetesTest, ::testing::Values("cpu", "tls"));

// The shipped manifests run the forward pass on the CPU (engine.device: cpu): none asks for a GPU
// or schedules on GPU nodes. (deploy/README.md says what a GPU pod of the runtime-cuda image
// needs.)
TEST(DeployGpuTest, NothingClaimsAGpu) {
  for (const auto& entry : fs::recursive_directory_iterator(Root() + "/deploy")) {
    if (!entry.is_regular_file() || entry.path().extension() == ".md") continue;
    const std::string text = ReadText(entry.path().string());
    const std::string name = entry.path().string();
    for (const char* claim : {"nvidia.com/gpu", "NVIDIA_VISIBLE_DEVICES", "kvserve:cuda",
                              "gpu.present", "runtimeClassName"}) {
      EXPECT_FALSE(absl::StrContains(text, claim)) << name << " mentions " << claim;
    }
  }
  EXPECT_FALSE(fs::exists(Root() + "/deploy/k8s/gpu"));
  EXPECT_FALSE(absl::StrContains(ReadText(Root() + "/Dockerfile"), "NVIDIA_VISIBLE_DEVICES"));
  EXPECT_TRUE(absl::StrContains(ReadText(Root() + "/deploy/README.md"),
                                "The forward pass runs on the CPU"));
}

// The drain lets the longest request the config allows finish: limits.max_tokens is bounded,
// and server.drain_timeout_seconds covers that many decode steps at the per-token latency
// measured under a full batch, plus the prefill of the longest prompt (deploy/README.md,
// "Drain and the longest request", gives the measurement).
TEST_F(DeployTest, DrainFitsTheLongestRequest) {
  const int32_t max_tokens = config_.engine.max_tokens_limit;
  ASSERT_GT(max_tokens, 0) << "limits.max_tokens unbounded: no drain timeout fits";
  const ServerConfig defaults;
  EXPECT_EQ(defaults.engine.max_tokens_limit, max_tokens) << "built-in default and config differ";
  EXPECT_EQ(defaults.drain_timeout_seconds, config_.drain_timeout_seconds);
  const double longest = kPrefillAllowanceSeconds + max_tokens * kSecondsPerTokenFullBatch;
  EXPECT_GE(config_.drain_timeout_seconds, longest)
      << max_tokens << " tokens at " << kSecondsPerTokenFullBatch << " s each + "
      << kPrefillAllowanceSeconds << " s prefill";
  const std::string readme = ReadText(Root() + "/deploy/README.md");
  EXPECT_TRUE(absl::StrContains(readme, "## Drain and the longest request"));
  EXPECT_TRUE(absl::StrContains(readme, absl::StrCat("limits.max_tokens: ", max_tokens)));
}

// ---- Prefix-affinity router -----------------------------------------------------------------

TEST_F(DeployTest, EnvoyHashesThePrefixHeaderOntoTheReplicas) {
  const YAML::Node envoy = Load("deploy/envoy/envoy.yaml");
  const YAML::Node listener = envoy["static_resources"]["listeners"][0];
  const YAML::Node hcm = listener["filter_chains"][0]["filters"][0]["typed_config"];
  const YAML::Node route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"];
  ASSERT_TRUE(route["hash_policy"]) << "no hash_policy";
  EXPECT_EQ(route["hash_policy"][0]["header"]["header_name"].as<std::string>(), kPrefixHashHeader);
  // A draining replica refuses new calls with UNAVAILABLE: the router retries them on another.
  const YAML::Node retry = route["retry_policy"];
  ASSERT_TRUE(retry) << "no retry_policy";
  const std::vector<std::string> retry_on =
      absl::StrSplit(retry["retry_on"].as<std::string>(), ',');
  EXPECT_NE(std::find(retry_on.begin(), retry_on.end(), "unavailable"), retry_on.end());
  EXPECT_GE(retry["num_retries"].as<int>(), 1);
  EXPECT_EQ(retry["retry_host_predicate"][0]["name"].as<std::string>(),
            "envoy.retry_host_predicates.previous_hosts");
  const std::string cluster_name = route["cluster"].as<std::string>();
  YAML::Node cluster;
  for (const YAML::Node& cl : envoy["static_resources"]["clusters"]) {
    if (cl["name"].as<std::string>() == cluster_name) cluster = cl;
  }
  ASSERT_TRUE(cluster) << "route names unknown cluster " << cluster_name;
  EXPECT_EQ(cluster["lb_policy"].as<std::string>(), "RING_HASH");
  EXPECT_TRUE(cluster["health_checks"][0]["grpc_health_check"]);
  EXPECT_TRUE(cluster["typed_extension_protocol_options"]
                     ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                     ["explicit_http_config"]["http2_protocol_options"]);
  const YAML::Node address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
                                    ["endpoint"]["address"]["socket_address"];
  EXPECT_EQ(address["port_value"].as<int>(), grpc_port_);

  // The backend host is the headless Service of the kvserve pods.
  Objects objects;
  Kustomize("deploy/k8s/cpu", objects);
  const YAML::Node headless = objects.Get("Service", address["address"].as<std::string>());
  ASSERT_TRUE(headless) << "no Service " << address["address"];
  EXPECT_EQ(headless["spec"]["clusterIP"].as<std::string>(), "None");

  // The router's Deployment serves the listener port and mounts the generated ConfigMap.
  Objects router;
  Kustomize("deploy/envoy", router);
  const YAML::Node dep = router.Get("Deployment", "kvserve-router");
  ASSERT_TRUE(dep);
  const YAML::Node c = dep["spec"]["template"]["spec"]["containers"][0];
  EXPECT_EQ(c["ports"][0]["containerPort"].as<int>(),
            listener["address"]["socket_address"]["port_value"].as<int>());
  const std::string cm =
      dep["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"].as<std::string>();
  EXPECT_TRUE(router.Get("ConfigMap", cm)) << cm;
  EXPECT_EQ(Strings(c["args"])[1],
            c["volumeMounts"][0]["mountPath"].as<std::string>() + "/envoy.yaml");
  const YAML::Node svc = router.Get("Service", "kvserve-router");
  EXPECT_TRUE(LabelsMatch(svc["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"]));
  EXPECT_EQ(svc["spec"]["ports"][0]["targetPort"].as<std::string>(),
            c["ports"][0]["name"].as<std::string>());
}

// ---- Real tools, when installed --------------------------------------------------------------

bool Have(const std::string& program) {
  return RunProcess({"/bin/sh", "-c", "command -v " + program}).exit_code == 0;
}

// The HTTP listener routes OpenAI-style bodies the same way: its Lua filter (run here in LuaJIT,
// the runtime Envoy embeds) sets the prefix header from the body, the same for the same prefix
// and salt, different otherwise, and never replaces a header the client sent.
TEST_F(DeployTest, EnvoyHttpListenerHashesTheBodyPrefix) {
  const YAML::Node envoy = Load("deploy/envoy/envoy.yaml");
  YAML::Node listener;
  for (const YAML::Node& l : envoy["static_resources"]["listeners"]) {
    if (l["name"].as<std::string>() == "http") listener = l;
  }
  ASSERT_TRUE(listener) << "no http listener";
  const YAML::Node hcm = listener["filter_chains"][0]["filters"][0]["typed_config"];
  const YAML::Node route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"];
  EXPECT_EQ(route["hash_policy"][0]["header"]["header_name"].as<std::string>(), kPrefixHashHeader);
  EXPECT_EQ(route["retry_policy"]["retriable_status_codes"][0].as<int>(), 503);
  YAML::Node cluster;
  for (const YAML::Node& cl : envoy["static_resources"]["clusters"]) {
    if (cl["name"].as<std::string>() == route["cluster"].as<std::string>()) cluster = cl;
  }
  ASSERT_TRUE(cluster);
  EXPECT_EQ(cluster["lb_policy"].as<std::string>(), "RING_HASH");
  EXPECT_EQ(cluster["health_checks"][0]["http_health_check"]["path"].as<std::string>(), "/health");
  EXPECT_EQ(cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                   ["socket_address"]["port_value"]
                       .as<int>(),
            kHttpPort);
  const YAML::Node lua = hcm["http_filters"][0];
  ASSERT_EQ(lua["name"].as<std::string>(), "envoy.filters.http.lua");
  const std::string code =
      lua["typed_config"]["default_source_code"]["inline_string"].as<std::string>();
  if (!Have("luajit")) GTEST_SKIP() << "luajit not installed (Debian package 'luajit')";
  ScratchDir dir;
  // A stand-in for Envoy's request handle: headers and a body; prints the header it ends with.
  const std::string harness = R"(
local function run(method, body, header)
  local h = {[":method"] = method, ["x-kvserve-prefix-hash"] = header}
  local headers = {get = function(_, k) return h[k] end, add = function(_, k, v) h[k] = v end}
  local handle = {
    headers = function() return headers end,
    body = function()
      return {length = function() return #body end,
              getBytes = function(_, s, n) return string.sub(body, s + 1, s + n) end}
    end}
  envoy_on_request(handle)
  return tostring(h["x-kvserve-prefix-hash"])
end
local sys = '{"model":"m","messages":[{"role":"system","content":"' .. string.rep("S", 600) .. '"}'
print(run("POST", sys .. ',{"role":"user","content":"one"}]}'))
print(run("POST", sys .. ',{"role":"user","content":"two"}],"max_tokens":5}'))
print(run("POST", '{"model":"m","messages":[{"role":"user","content":"other"}]}'))
print(run("POST", '{"prompt":"Once upon a time","cache_salt":"a"}'))
print(run("POST", '{"prompt":"Once upon a time","cache_salt":"b"}'))
print(run("POST", '{"prompt":"Once upon a time","cache_salt":"b"}', "from-client"))
print(run("GET", '', nil))
print(run("POST", '{"tokens":[1,2]}'))
)";
  const std::string script = dir.Write("route.lua", code + harness);
  const ProcessResult r = RunProcess({"/usr/bin/env", "luajit", script});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::vector<std::string> out = absl::StrSplit(r.out, '\n', absl::SkipEmpty());
  ASSERT_EQ(out.size(), 8u) << r.out;
  EXPECT_EQ(out[0].size(), 8u) << out[0];
  EXPECT_EQ(out[0], out[1]) << "the same 512-byte prefix routes together";
  EXPECT_NE(out[0], out[2]);
  EXPECT_NE(out[3], out[4]) << "the cache salt takes part";
  EXPECT_EQ(out[5], "from-client");
  EXPECT_EQ(out[6], "nil");
  EXPECT_EQ(out[7], "nil");
}

std::string Sha256(const std::string& path) {
  const ProcessResult r = RunProcess({"/usr/bin/sha256sum", path});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.out.substr(0, r.out.find(' '));
}

// The alert rules are valid and behave as their unit tests say (deploy/prometheus/alerts_test.yml).
TEST(DeployToolsTest, PromtoolUnitTestsTheAlertRules) {
  if (!Have("promtool")) GTEST_SKIP() << "promtool not installed (Debian package 'prometheus')";
  const ProcessResult check = RunProcess(
      {"/usr/bin/env", "promtool", "check", "rules", Root() + "/deploy/prometheus/alerts.yml"});
  EXPECT_EQ(check.exit_code, 0) << check.out << check.err;
  const ProcessResult test = RunProcess(
      {"/usr/bin/env", "promtool", "test", "rules", Root() + "/deploy/prometheus/alerts_test.yml"});
  EXPECT_EQ(test.exit_code, 0) << test.out << test.err;
}

// Every alert uses only metrics the server exports (docs/metrics.md) or Prometheus' own `up`,
// and each of the required conditions has an alert.
TEST(DeployAlertsTest, RulesUseExportedMetrics) {
  const std::string docs = ReadText(Root() + "/docs/metrics.md");
  const YAML::Node rules = Load("deploy/prometheus/alerts.yml");
  std::set<std::string> alerts;
  for (const YAML::Node& group : rules["groups"]) {
    for (const YAML::Node& rule : group["rules"]) {
      alerts.insert(rule["alert"].as<std::string>());
      const std::string expr = rule["expr"].as<std::string>();
      size_t pos = 0;
      while ((pos = expr.find("kvserve_", pos)) != std::string::npos) {
        size_t end = pos;
        while (end < expr.size() &&
               (std::isalnum(static_cast<unsigned char>(expr[end])) || expr[end] == '_')) {
          ++end;
        }
        std::string metric = expr.substr(pos, end - pos);
        for (const char* suffix : {"_bucket", "_sum", "_count"}) {
          if (absl::EndsWith(metric, suffix) && !absl::StrContains(docs, "`" + metric + "`")) {
            metric = metric.substr(0, metric.size() - std::string(suffix).size());
          }
        }
        EXPECT_TRUE(absl::StrContains(docs, "| `" + metric + "` |"))
            << rule["alert"] << " uses " << metric << ", not in docs/metrics.md";
        pos = end;
      }
    }
  }
  for (const char* a : {"KvserveTargetDown", "KvserveHighErrorRatio", "KvserveTtftP99High",
                        "KvserveQueueBacklog", "KvserveKvPressure", "KvservePreemptionRate"}) {
    EXPECT_TRUE(alerts.contains(a)) << "no alert " << a;
  }
}

TEST(DeployToolsTest, PromtoolAcceptsThePrometheusConfig) {
  if (!Have("promtool")) GTEST_SKIP() << "promtool not installed (Debian package 'prometheus')";
  const ProcessResult r = RunProcess({"/usr/bin/env", "promtool", "check", "config",
                                      Root() + "/deploy/prometheus/prometheus.yml"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
}

// `kubectl kustomize` builds every variant offline, with the objects the tests above read.
TEST(DeployToolsTest, KustomizeBuildsEveryVariant) {
  if (!Have("kubectl")) GTEST_SKIP() << "kubectl not installed";
  for (const auto& [dir, kinds] : std::vector<std::pair<std::string, std::set<std::string>>>{
           {"deploy/k8s/cpu",
            {"ConfigMap", "Service", "ServiceMonitor", "HorizontalPodAutoscaler",
             "PersistentVolumeClaim", "Deployment", "PodDisruptionBudget", "NetworkPolicy",
             "PrometheusRule"}},
           {"deploy/k8s/tls",
            {"ConfigMap", "Service", "ServiceMonitor", "HorizontalPodAutoscaler",
             "PersistentVolumeClaim", "Deployment", "PodDisruptionBudget", "NetworkPolicy",
             "PrometheusRule"}},
           {"deploy/envoy", {"ConfigMap", "Service", "Deployment"}}}) {
    const ProcessResult r =
        RunProcess({"/usr/bin/env", "kubectl", "kustomize", Root() + "/" + dir});
    ASSERT_EQ(r.exit_code, 0) << dir << ": " << r.err;
    std::set<std::string> built;
    for (const YAML::Node& doc : YAML::LoadAll(r.out)) built.insert(doc["kind"].as<std::string>());
    EXPECT_EQ(built, kinds) << dir;
  }
}

}  // namespace
}  // namespace kvserve::server::testing
