# Cluster targets (test tooling; see docs/cluster.md). Included by the
# top-level Makefile with `include hack/cluster/cluster.mk`.
#
#   make cluster-up                 # local cluster from sources (default), waits for Ready + DNS
#   make cluster-up CLUSTER=kind    # a kind cluster instead, with our images loaded
#   make images                     # build our images (node, operator, ...) offline from this
#                                   # checkout, and load them if a cluster is up
#   make cluster-smoke              # pytest tests/e2e against whichever cluster is up
#   make cluster-down

CLUSTER ?= local
KIND_CLUSTER_NAME ?= shardset
PYTHON ?= python3
HACK := hack/cluster
# only the versions, not the rest of the shell-style file
K8S_VERSION := $(shell sed -n 's/^K8S_VERSION=//p' $(HACK)/versions.env)
KIND_VERSION := $(shell sed -n 's/^KIND_VERSION=//p' $(HACK)/versions.env)

SHARDSET_CACHE ?= $(HOME)/.cache/shardset
KIND := $(SHARDSET_CACHE)/kind-$(KIND_VERSION)/bin/kind
# Images our tests run; `make images` builds them with hack/cluster/images.sh
# from the current checkout (each rebuilt only when its inputs changed): the
# node image, and the operator image once operator/Dockerfile is there.
NODE_PROGRAM := $(if $(wildcard pyproject.toml),node)
OPERATOR_PROGRAM := $(if $(wildcard operator/Dockerfile),operator)
OUR_IMAGES := testserver $(NODE_PROGRAM) $(OPERATOR_PROGRAM)
IMAGES ?= shardset.local/testserver:dev $(if $(NODE_PROGRAM),shardset/node:dev) \
	$(if $(OPERATOR_PROGRAM),shardset/operator:dev)
# empty: kind $(KIND_VERSION)'s own default node image (Kubernetes v1.34.0)
KIND_NODE_IMAGE ?=

.PHONY: cluster-up cluster-down images cluster-smoke cluster-build cluster-deps kind

cluster-deps:
	$(HACK)/install-deps.sh

cluster-build:
	$(HACK)/build.sh

ifeq ($(CLUSTER),local)
cluster-up:
	$(HACK)/up.sh

cluster-down:
	$(HACK)/down.sh

images:
	$(HACK)/images.sh base pause coredns $(OUR_IMAGES)
	$(HACK)/load-images.sh $(IMAGES)

else ifeq ($(CLUSTER),kind)
kind:
	$(HACK)/build.sh kind

cluster-up: kind
	$(KIND) get clusters 2>/dev/null | grep -qx $(KIND_CLUSTER_NAME) || \
		$(KIND) create cluster --name $(KIND_CLUSTER_NAME) $(if $(KIND_NODE_IMAGE),--image $(KIND_NODE_IMAGE)) --wait 5m
	$(KIND) get kubeconfig --name $(KIND_CLUSTER_NAME) > $(SHARDSET_CACHE)/kind-$(KIND_CLUSTER_NAME).kubeconfig
	$(MAKE) images CLUSTER=kind

cluster-down: kind
	$(KIND) delete cluster --name $(KIND_CLUSTER_NAME)
	rm -f $(SHARDSET_CACHE)/kind-$(KIND_CLUSTER_NAME).kubeconfig

images: kind
	$(HACK)/images.sh base $(OUR_IMAGES)
	$(KIND) load docker-image --name $(KIND_CLUSTER_NAME) $(IMAGES)

else
$(error CLUSTER must be local or kind, not $(CLUSTER))
endif

cluster-smoke:
	$(PYTHON) -m pytest -v tests/e2e
