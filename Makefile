# Two commands do everything on a fresh machine (Debian/Ubuntu, root or sudo-less root):
#   make train   installs what is missing, then trains configs/cartpole.yaml on 2 ranks under horovodrun
#   make test    installs what is missing, then runs the whole test suite
VENV    := .venv
NP      ?= 2
CONFIG  ?= configs/cartpole.yaml
RUN_DIR ?= runs/cartpole-np$(NP)
PYTEST_ARGS ?=

.PHONY: install train test bench clean

install:
	@bash tools/install.sh

# make train starts afresh: --restart deletes an earlier run's outputs in RUN_DIR (only files a run writes; refused
# if the dir holds anything else or a job is using it). Continue a run instead: horovodrun ... hvd-dqn train --resume $(RUN_DIR)
# hvd_dqn.launchout shows the ranks' lines as they print them (rank 0's progress; any other rank's lines, and
# tracebacks, after "rank N: "), without mpirun's [1,0]<stdout>: tags or the CUDA-plugin noise of horovodrun's
# TensorFlow build check.
train: install
	OMPI_MCA_odls_base_sigkill_timeout=$${OMPI_MCA_odls_base_sigkill_timeout:-10} \
	    $(VENV)/bin/python -m hvd_dqn.launchout $(VENV)/bin/horovodrun -np $(NP) --mpi -H localhost:$(NP) \
	    $(VENV)/bin/hvd-dqn train --config $(CONFIG) --run-dir $(RUN_DIR) --restart

test: install
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: install
	$(VENV)/bin/python benchmarks/cartpole.py

# runs/ holds trained models and checkpoints: not a build product, so clean leaves it
clean:
	rm -rf .pytest_cache
