"""What the workers' fork server imports first (see workers.worker_context): from then on the kernel
kills the fork server the moment the sweep that started it dies, and with it every worker it forked
(each asks the same of its own parent). Left to itself, the fork server would notice only at its
next wake-up and take its time to exit, while its workers went on writing into runs that a rerun
may take over."""

from trainer.executors.workers import kill_with_parent

kill_with_parent()
