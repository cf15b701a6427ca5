"""What the workers' fork server imports first (see workers.worker_context): from then on the kernel
kills the fork server the moment the sweep that started it dies, and with it every worker it forked
(each asks the same of its own parent). Left to itself, the fork server would notice only at its
next wake-up and take its time to exit, while its workers went on writing into runs that a rerun
may take over.

The fork server ignores the stop signals, as the workers do: SIGTERM sent to the sweep's process
group (`kill -TERM -PGID`, a container or batch system stopping the job) would otherwise end the
fork server, and the kernel would kill every worker with it before its run could record itself.
Only the sweep's own process acts on them."""

import signal

from trainer.executors.workers import STOP_SIGNALS, kill_with_parent

kill_with_parent()
for _signum in STOP_SIGNALS:
    signal.signal(_signum, signal.SIG_IGN)
