"""The Kubernetes manifests, the Prometheus rules and the dashboard agree with each other and with the server.

Schema validation (kubernetes-validate) and promtool run in deploy/check.sh; these tests check what no schema
can: names, ports, labels and timings that must match across files.
"""

import re
import unittest

from support import (
    DASHBOARD,
    DEPLOY,
    dashboard_queries,
    exported_metrics,
    kustomize,
    metrics_in,
    one,
    rule_expressions,
)

import yaml


def container(objects: list[dict]) -> dict:
    return one(objects, "Deployment", "marc")["spec"]["template"]["spec"]["containers"][0]


def flags(objects: list[dict]) -> dict:
    maps = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("marc-flags")]
    assert len(maps) == 1
    return maps[0]["data"]


class Overlays(unittest.TestCase):
    def setUp(self):
        self.overlays = {name: kustomize(name) for name in ("cpu", "gpu")}

    def test_the_drain_fits_in_the_grace_period(self):
        for name, objects in self.overlays.items():
            pod = one(objects, "Deployment", "marc")["spec"]["template"]["spec"]
            pre_stop = container(objects)["lifecycle"]["preStop"]["exec"]["command"]
            self.assertEqual(pre_stop[0], "sleep")
            drain = int(flags(objects)["MARC_DRAIN_TIMEOUT_S"])
            self.assertGreaterEqual(
                pod["terminationGracePeriodSeconds"], int(pre_stop[1]) + drain + 5, f"{name}: SIGKILL before the drain ends"
            )

    def test_flags_reach_the_container_from_the_generated_config_map(self):
        for name, objects in self.overlays.items():
            config_map = [o["metadata"]["name"] for o in objects if o["kind"] == "ConfigMap"][0]
            refs = [e["configMapRef"]["name"] for e in container(objects)["envFrom"]]
            self.assertEqual(refs, [config_map], name)
            for key in flags(objects):
                self.assertRegex(key, r"^(MARC_[A-Z_]+|RUST_LOG)$", name)

    def test_probes_and_policies_name_the_container_ports(self):
        for name, objects in self.overlays.items():
            c = container(objects)
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            self.assertEqual(ports, {"grpc": 50051, "metrics": 9464}, name)
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                self.assertEqual(c[probe]["grpc"]["port"], ports["grpc"], f"{name} {probe}")
            policy = one(objects, "NetworkPolicy", "marc")["spec"]["ingress"][0]["ports"]
            self.assertEqual({p["port"] for p in policy}, set(ports), name)
            for service in (o for o in objects if o["kind"] == "Service"):
                for port in service["spec"]["ports"]:
                    self.assertIn(port["targetPort"], ports, f"{name} {service['metadata']['name']}")

    def test_the_service_monitor_selects_a_service_with_the_metrics_port(self):
        for name, objects in self.overlays.items():
            monitor = one(objects, "ServiceMonitor", "marc")["spec"]
            wanted = monitor["selector"]["matchLabels"]
            services = [
                o for o in objects if o["kind"] == "Service" and wanted.items() <= o["metadata"]["labels"].items()
            ]
            self.assertEqual(len(services), 1, name)
            port_names = {p["name"] for p in services[0]["spec"]["ports"]}
            for endpoint in monitor["endpoints"]:
                self.assertIn(endpoint["port"], port_names, name)

    def test_selectors_match_the_pods(self):
        for name, objects in self.overlays.items():
            labels = one(objects, "Deployment", "marc")["spec"]["template"]["metadata"]["labels"]
            for kind in ("PodDisruptionBudget",):
                selector = one(objects, kind, "marc")["spec"]["selector"]["matchLabels"]
                self.assertLessEqual(selector.items(), labels.items(), f"{name} {kind}")
            for service in (o for o in objects if o["kind"] == "Service"):
                self.assertLessEqual(service["spec"]["selector"].items(), labels.items(), name)
            self.assertLessEqual(
                one(objects, "NetworkPolicy", "marc")["spec"]["podSelector"]["matchLabels"].items(), labels.items()
            )

    def test_the_hpa_scales_on_metrics_the_server_exports(self):
        exported = exported_metrics()
        for name, objects in self.overlays.items():
            hpa = one(objects, "HorizontalPodAutoscaler", "marc")["spec"]
            self.assertEqual(hpa["scaleTargetRef"]["name"], "marc")
            custom = [m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"]
            self.assertTrue(custom, name)
            for metric in custom:
                self.assertIn(metric, exported, name)
        adapter = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter" / "values.yaml").read_text())
        served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
        for objects in self.overlays.values():
            hpa = one(objects, "HorizontalPodAutoscaler", "marc")["spec"]
            for metric in hpa["metrics"]:
                if metric["type"] == "Pods":
                    self.assertIn(metric["pods"]["metric"]["name"], served, "the adapter does not serve it")

    def test_the_gpu_overlay_asks_for_a_gpu_and_the_cuda_image(self):
        c = container(self.overlays["gpu"])
        self.assertEqual(c["resources"]["limits"]["nvidia.com/gpu"], "1")
        self.assertTrue(c["image"].endswith(":cuda"), c["image"])
        self.assertTrue(container(self.overlays["cpu"])["image"].endswith(":cpu"))
        self.assertNotIn("nvidia.com/gpu", container(self.overlays["cpu"])["resources"]["limits"])

    def test_the_gpu_overlay_serves_on_cuda_with_a_writable_ptx_cache(self):
        gpu = flags(self.overlays["gpu"])
        self.assertEqual(gpu["MARC_DEVICE"], "cuda")
        self.assertNotIn("MARC_DEVICE", flags(self.overlays["cpu"]))
        # The root filesystem is read-only, and the CUDA backend fails to open where it cannot write
        # the compiled kernels: the cache must sit on a mounted volume.
        c = container(self.overlays["gpu"])
        self.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
        mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
        self.assertTrue(any(gpu["MARC_PTX_CACHE"].startswith(m.rstrip("/") + "/") for m in mounts), mounts)


class Observability(unittest.TestCase):
    def test_rules_and_dashboard_read_only_exported_metrics(self):
        exported = exported_metrics()
        self.assertIn("marc_requests_total", exported)
        used = set()
        for expr in rule_expressions() + [q for _, q in dashboard_queries()]:
            used |= metrics_in(expr)
        self.assertTrue(used)
        self.assertLessEqual(used, exported)

    def test_the_dashboard_covers_what_sres_watch(self):
        text = DASHBOARD.read_text()
        for metric in [
            "marc_queue_duration_seconds_bucket",
            "marc_compute_duration_seconds_bucket",
            "marc_request_duration_seconds_bucket",
            "marc_requests_total",
            "marc_queue_tokens",
            "marc_batch_size_bucket",
            "marc_batch_tokens_bucket",
            "marc_tokens_total",
            "marc_in_flight_requests",
            "marc_rejected_total",
            "marc_items_total",
        ]:
            self.assertIn(metric, text)

    def test_the_dockerfiles_expose_the_container_ports_and_run_marc_serve(self):
        for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
            text = (DEPLOY / "docker" / name).read_text()
            self.assertRegex(text, r"(?m)^EXPOSE 50051 9464$", name)
            self.assertIn('ENTRYPOINT ["/usr/local/bin/marc", "serve"]', text)
            self.assertIn("MARC_GRPC_ADDR=0.0.0.0:50051", text)
            self.assertRegex(text, r"(?m)^USER 10001$", name)
            self.assertTrue(re.search(r"(?m)^FROM .* AS build$", text), name)


if __name__ == "__main__":
    unittest.main()
