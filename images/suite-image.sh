#!/bin/sh
# The build steps the suite's images share (images/component, images/component-cuda; images/serving runs
# its smoke test on the component image). Dockerfiles
# cannot include each other, so each one COPYs this script and RUNs it one step at a time, which keeps Docker's
# layer cache per step (torch before the sources, the sources before the suite):
#
#   suite-image.sh user                  the non-root user every image runs as
#   suite-image.sh torch-cpu             torch from the CPU-only index (the CPU images)
#   suite-image.sh install KIND [--base-torch] [PIP_ARGS...]
#                                        the suite from /src, then /src removed and KIND's smoke test
#   suite-image.sh smoke KIND            KIND's smoke test alone (the serving image, built on the component image)
#
# KIND is component, cuda or serving. --base-torch keeps the base image's torch (the CUDA image): constraints.txt
# less its torch pin, and no `pip check`, since the base's conda packages do not all declare what pip checks.
set -eu

# Build-time pip settings only: nothing of them stays in the image's environment.
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# what every stage's logic needs, imported in the component images' smoke tests
STAGE_IMPORTS="numpy, pandas, pyarrow, scipy.stats, matplotlib, torch, kfp, kfops.components.ingest.logic, \
kfops.components.preprocess.logic, kfops.components.train.logic, kfops.components.train.pyfunc, \
kfops.components.evaluate.logic, kfops.components.register.logic"

smoke() {
    case "$1" in
    component)
        python -c "import $STAGE_IMPORTS
assert torch.version.cuda is None, 'expected the CPU torch build, got CUDA ' + str(torch.version.cuda)
assert hasattr(numpy, 'trapezoid'), 'numpy ' + numpy.__version__ + ' lacks trapezoid (needs numpy>=2)'
print('kfops', kfops.__version__, 'torch', torch.__version__, 'kfp', kfp.__version__)"
        ;;
    cuda)
        python -c "import $STAGE_IMPORTS
assert torch.__version__.startswith('2.5.1'), 'pip replaced the base torch with ' + torch.__version__
assert hasattr(numpy, 'trapezoid'), 'numpy ' + numpy.__version__ + ' lacks trapezoid'
print('kfops', kfops.__version__, 'torch', torch.__version__, 'CUDA', torch.version.cuda, 'kfp', kfp.__version__)"
        ;;
    serving)
        python -c "import numpy, pandas, torch, kserve, mlflow.pyfunc, kfops.serving
assert torch.version.cuda is None, 'expected the CPU torch build, got CUDA ' + str(torch.version.cuda)
from importlib.metadata import version
print('kfops', kfops.__version__, 'torch', torch.__version__, 'kserve', version('kserve'), 'mlflow', mlflow.__version__)"
        # the server's command line must start
        python -m kfops.serving --help > /dev/null
        ;;
    *)
        echo "suite-image.sh: unknown image kind '$1' (component, cuda or serving)" >&2
        exit 2
        ;;
    esac
}

case "${1:-}" in
user)
    # numeric uid/gid 1000: Kubernetes runAsNonRoot can only verify a numeric user
    groupadd --gid 1000 kfops
    useradd --uid 1000 --gid 1000 --home-dir /home/kfops --create-home --shell /usr/sbin/nologin kfops
    ;;
torch-cpu)
    # Before the suite: an unpinned `torch` from PyPI would pull a CUDA build of several GB. The project requires a
    # range (torch>=2.4), so the suite's install keeps this build.
    pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    ;;
install)
    kind=$2
    shift 2
    if [ "${1:-}" = "--base-torch" ]; then
        shift
        grep -v '^torch==' /src/constraints.txt > /tmp/constraints.txt
        # numpy>=2: evaluate uses numpy.trapezoid (2.0+), setup.cfg still allows numpy>=1.26, and a base image
        # may carry an older numpy
        pip install --no-cache-dir -c /tmp/constraints.txt "/src[features]" "numpy>=2" "$@"
    else
        # the versions the tests ran with (constraints.txt)
        pip install --no-cache-dir -c /src/constraints.txt "/src[features]" "$@"
        pip check
    fi
    # pip builds the wheel inside /src: removing it in the same layer keeps the build leftovers out of the image
    rm -rf /src
    smoke "$kind"
    # what the build wrote under /tmp (the smoke test's caches, root's) must not shadow what uid 1000 writes there
    rm -rf /tmp/* /tmp/.[!.]*
    ;;
smoke)
    smoke "$2"
    rm -rf /tmp/* /tmp/.[!.]*
    ;;
*)
    echo "usage: suite-image.sh user | torch-cpu | install KIND [--base-torch] [PIP_ARGS...] | smoke KIND" >&2
    exit 2
    ;;
esac
