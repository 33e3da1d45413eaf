# The nftproxy image: the static binary and nothing else (no shell, no `nft`:
# rules go through netlink). Built offline from a binary built beforehand:
#
#   hack/image.sh        # CGO_ENABLED=0 go build, then podman build
#
# The build context is a directory holding only that binary. Dockerfile.multistage
# builds the same image from source in a golang builder.
FROM scratch
ARG VERSION=devel
ARG REVISION=unknown
ARG CREATED
ARG GO_VERSION
LABEL org.opencontainers.image.title=nftproxy \
      org.opencontainers.image.description="kube-proxy replacement programming nftables through netlink" \
      org.opencontainers.image.version=$VERSION \
      org.opencontainers.image.revision=$REVISION \
      org.opencontainers.image.created=$CREATED \
      io.nftproxy.go-version=$GO_VERSION
COPY nftproxy /nftproxy
# Not root: /nftproxy's file capability (cap_net_admin=ep) is all it needs
# and all it gets (manifests/daemonset.yaml says why).
USER 65532:65532
ENTRYPOINT ["/nftproxy"]
