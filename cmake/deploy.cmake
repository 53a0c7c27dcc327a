# ---- deploy/: the Kubernetes manifests and the container image ---------------
# Included by CMakeLists.txt. Both tests carry the label `deploy`
# (ctest -L deploy); both exit 77 (a skip) when they cannot run, and fail
# instead under CI=true.

# deploy-manifests: renders deploy/ and deploy/optional/ with `kubectl
# kustomize` and checks the DaemonSet, the RBAC and the agent settings (also
# with the agent's own parser, through ${CMAKE_BINARY_DIR}/bin/egressctl when
# it is built); checks deploy/Containerfile against scripts/install-deps and
# deploy/runtime-packages. A second or two; no root.
add_test(NAME deploy-manifests
         COMMAND python3 ${CMAKE_SOURCE_DIR}/tests/deploy/check_manifests.py
                 ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR}/bin)
set_tests_properties(deploy-manifests PROPERTIES LABELS deploy TIMEOUT 60 SKIP_RETURN_CODE 77)

# deploy-image: deploy/build-image from the binaries in ${CMAKE_BINARY_DIR}/bin,
# then skopeo inspect and a chroot of the unpacked image that runs egressd and
# egressctl. Root. The Debian root is cached in ${CMAKE_BINARY_DIR}/deploy-cache
# (a cold run builds it with mmdebstrap: 1.5-3 minutes on 2 cores; a warm run
# takes about 30-40 s). build-image is stopped after EGRESSD_IMAGE_TIMEOUT seconds
# (and cleans up) before CTest's TIMEOUT would kill the test outright.
add_test(NAME deploy-image
         COMMAND bash ${CMAKE_SOURCE_DIR}/tests/deploy/check_image.sh
                 ${CMAKE_SOURCE_DIR} ${CMAKE_BINARY_DIR}/bin ${CMAKE_BINARY_DIR}/deploy-cache)
set_tests_properties(deploy-image PROPERTIES
                     LABELS deploy RUN_SERIAL TRUE TIMEOUT 360 SKIP_RETURN_CODE 77
                     ENVIRONMENT EGRESSD_IMAGE_TIMEOUT=240)
