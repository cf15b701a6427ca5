#!/usr/bin/env bash
# A one-node Slurm on this machine, for the Slurm tests: `up` starts it, `down` stops it.
#
#   eval "$(scripts/local-slurm.sh up | tail -1)"   # its last line is `export SLURM_CONF=...`
#   scripts/local-slurm.sh down
#
# `up` installs Debian's slurmctld, slurmd, slurm-client and munge on first use (as root, through
# apt-get), writes its configuration, keys, state and logs into .slurm/ at the repository's root
# (SLURM_LOCAL_DIR), and starts munged, slurmctld and slurmd from there, listening on 127.0.0.1
# only, on ports of their own (SLURM_LOCAL_CTLD_PORT, SLURM_LOCAL_SLURMD_PORT; 16817 and 16818 by
# default), so a system Slurm or munge, if any, is left alone. Running it again while the daemons
# run only waits for the node and prints the export line. `down` cancels the cluster's jobs and
# stops the daemons `up` started, by the process ids it recorded. There is no accounting (no
# slurmdbd): `sacct` answers with an error. Progress goes to stderr; stdout has only the export line.
# Job ids go on across down and up while .slurm/state/ is kept.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${SLURM_LOCAL_DIR:-$ROOT/.slurm}"
CTLD_PORT="${SLURM_LOCAL_CTLD_PORT:-16817}"
SLURMD_PORT="${SLURM_LOCAL_SLURMD_PORT:-16818}"
NODE=localnode
CONF="$DIR/slurm.conf"
MUNGE_SOCKET="$DIR/munge/munge.socket"
WAIT_S="${SLURM_LOCAL_WAIT_S:-60}"
MIN_JOB_AGE="${SLURM_LOCAL_MIN_JOB_AGE:-5}"
PACKAGES=(slurmctld slurmd slurm-client munge)
DAEMONS=(munged slurmctld slurmd)

say() { echo "local-slurm: $*" >&2; }
die() {
	say "$*"
	exit 1
}

pid_of() { # the recorded pid of a daemon if that process still runs, else nothing
	local file="$DIR/run/$1.pid" pid
	[[ -f $file ]] || return 0
	pid="$(cat "$file" 2>/dev/null || true)"
	if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
		echo "$pid"
	fi
}

log_tails() {
	local name
	for name in "${DAEMONS[@]}"; do
		if [[ -s $DIR/log/$name.log ]]; then
			echo "--- last lines of $DIR/log/$name.log" >&2
			tail -n 15 "$DIR/log/$name.log" >&2
		fi
	done
}

install_packages() {
	local missing=() package
	for package in "${PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
	done
	((${#missing[@]} == 0)) && return 0
	[[ $(id -u) == 0 ]] || die "installing ${missing[*]} needs root; run it as root or install them first"
	say "installing ${missing[*]} (apt-get, once)"
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$DIR/log/apt.log" 2>&1; then
		apt-get update -qq >>"$DIR/log/apt.log" 2>&1 || true
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$DIR/log/apt.log" 2>&1 ||
			{
				tail -n 20 "$DIR/log/apt.log" >&2
				die "apt-get could not install ${missing[*]}; its output is in $DIR/log/apt.log"
			}
	fi
}

write_config() {
	# The node as slurmd itself sees it (CPUs, sockets, cores, threads, memory), so it registers idle.
	local hardware
	hardware="$(slurmd -C | head -n 1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=' | tr '\n' ' ')"
	[[ $hardware == *CPUs=* && $hardware == *RealMemory=* ]] || die "slurmd -C did not report this machine's CPUs and memory: $(slurmd -C 2>&1 | head -n 3)"
	local memory cpus
	memory="$(sed -E 's/.*RealMemory=([0-9]+).*/\1/' <<<"$hardware")"
	cpus="$(sed -E 's/.*CPUs=([0-9]+).*/\1/' <<<"$hardware")"
	cat >"$CONF.new" <<EOF
# Written by scripts/local-slurm.sh: a one-node cluster on 127.0.0.1, for the tests.
ClusterName=local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
# Bind to the configured addresses (127.0.0.1), never to every interface.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (120 s by default).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job that asks for no memory gets a share per CPU, not the whole node.
DefMemPerCPU=$((memory / cpus))
# Requeue (scontrol requeue, a preempted job) is allowed; finished jobs leave squeue MinJobAge seconds after they end.
JobRequeue=1
MinJobAge=$MIN_JOB_AGE
# Look for startable jobs every 2 s (a requeued job becomes eligible without an event that wakes the scheduler).
SchedulerParameters=sched_interval=2,bf_interval=2
KillWait=10
ReturnToService=2
SlurmdTimeout=60
InactiveLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=localhost ${hardware}State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
	mv "$CONF.new" "$CONF"
}

start_munge() {
	[[ -n $(pid_of munged) ]] && return 0
	if [[ ! -s $DIR/munge/munge.key ]]; then
		dd if=/dev/urandom of="$DIR/munge/munge.key.new" bs=1024 count=1 status=none
		chmod 0400 "$DIR/munge/munge.key.new"
		mv "$DIR/munge/munge.key.new" "$DIR/munge/munge.key"
	fi
	rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
	# --force: munged would otherwise refuse the repository's folders, which others may read.
	munged --force --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" \
		--pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" \
		--seed-file="$DIR/munge/munged.seed" ||
		{
			log_tails
			die "munged did not start"
		}
}

start_daemon() { # name, command...
	local name=$1
	shift
	[[ -n $(pid_of "$name") ]] && return 0
	"$@" || {
		log_tails
		die "$name did not start"
	}
}

wait_idle() {
	local start=$SECONDS state="" name
	while ((SECONDS < start + WAIT_S)); do
		state="$(SLURM_CONF=$CONF sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null || true)"
		[[ $state == idle || $state == mixed || $state == allocated ]] && return 0
		if ((SECONDS > start + 3)); then # a daemon has written its pid file by now, or has died
			for name in "${DAEMONS[@]}"; do
				[[ -n $(pid_of "$name") ]] || {
					log_tails
					die "$name exited while starting; the logs above are from $DIR/log"
				}
			done
		fi
		sleep 1
	done
	log_tails
	die "node $NODE is not idle after ${WAIT_S}s (sinfo says '${state:-nothing}'); the logs above are from $DIR/log"
}

up() {
	mkdir -p "$DIR"/{state,spool,run,log,munge}
	chmod 0700 "$DIR/munge"
	((${#MUNGE_SOCKET} < 100)) || die "the munge socket path $MUNGE_SOCKET is too long for a socket; set SLURM_LOCAL_DIR to a shorter folder"
	install_packages
	if [[ -n $(pid_of munged) && -n $(pid_of slurmctld) && -n $(pid_of slurmd) ]]; then
		say "already running (pids $(pid_of munged), $(pid_of slurmctld), $(pid_of slurmd))"
		wait_idle
	else
		local start=$SECONDS
		[[ -n $(pid_of slurmctld) ]] || write_config
		start_munge
		start_daemon slurmctld slurmctld -f "$CONF"
		start_daemon slurmd slurmd -f "$CONF" -N "$NODE"
		wait_idle
		say "node $NODE idle after $((SECONDS - start))s; ports $CTLD_PORT, $SLURMD_PORT on 127.0.0.1; logs in $DIR/log"
	fi
	echo "export SLURM_CONF=$CONF"
}

down() {
	if [[ -n $(pid_of slurmctld) ]]; then
		# Jobs still running would outlive slurmd in their slurmstepd processes: cancel them first.
		SLURM_CONF=$CONF scancel --full --user="$(id -un)" 2>/dev/null || true
	fi
	local name pid pids=()
	for name in slurmd slurmctld munged; do
		pid="$(pid_of "$name")"
		[[ -n $pid ]] || continue
		kill -TERM "$pid" 2>/dev/null || true
		pids+=("$pid")
	done
	local deadline=$((SECONDS + 30))
	for pid in "${pids[@]}"; do
		while kill -0 "$pid" 2>/dev/null; do
			((SECONDS < deadline)) || {
				say "process $pid did not stop in 30s after SIGTERM; sending SIGKILL"
				kill -KILL "$pid" 2>/dev/null || true
				break
			}
			sleep 0.2
		done
	done
	rm -f "$DIR"/run/*.pid
	say "stopped ${#pids[@]} daemon(s)"
}

case "${1:-}" in
up) up ;;
down) down ;;
*) die "usage: $0 up|down" ;;
esac
