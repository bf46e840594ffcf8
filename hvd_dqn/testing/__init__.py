"""Test-only code shipped with the package so that test jobs started by launchers (horovodrun, mpirun, srun) can
use it. A production job never imports it: the trainer does only when HVD_DQN_TEST_HOOKS=1."""
