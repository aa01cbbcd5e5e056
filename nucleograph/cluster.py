"""Work spread over a Dask cluster: a ``LocalCluster`` on this machine, or an existing scheduler by address.

``--cluster local[:N]`` starts N worker processes here (one thread each; default one per CPU) and
``--cluster tcp://HOST:PORT`` (or ``tls://``) joins a running ``dask scheduler``, whatever started its
workers: ``dask worker`` by hand, docker-compose, dask-jobqueue on Slurm, or Kubernetes.
``NUCLEOGRAPH_DASK`` gives the same choice from the environment. Dask, not nucleograph, schedules the
tasks, moves their inputs, and reruns on another worker the tasks of a worker that was lost.

Things every task of a worker shares (a Neo4j driver, a loaded network) are made once per worker by a
:class:`WorkerResources` plugin and closed when the work is done; a task reaches them by the plugin's
name with :func:`resources`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from distributed import Client, LocalCluster, WorkerPlugin, get_client, get_worker

from nucleograph.errors import ConfigError

#: The environment variable that names the cluster when ``--cluster`` is not given.
ENV = "NUCLEOGRAPH_DASK"
#: The port a local cluster's dashboard takes when it is free (Dask's own default).
DASHBOARD_PORT = 8787
_SCHEMES = ("tcp://", "tls://")


@dataclass(frozen=True)
class ClusterSpec:
    """Where Dask tasks run.

    Parameters
    ----------
    address : str or None
        A scheduler's address (``tcp://HOST:PORT``); None for a ``LocalCluster`` started here.
    workers : int or None
        Worker processes of a local cluster (default: one per CPU); None for a scheduler by address.
    """

    address: str | None = None
    workers: int | None = None

    @classmethod
    def parse(cls, text: str, *, source: str = "--cluster") -> ClusterSpec:
        """Read ``local``, ``local:N`` or ``tcp://HOST:PORT``.

        Parameters
        ----------
        text : str
        source : str
            Where ``text`` came from, named in errors (``--cluster`` or :data:`ENV`).

        Returns
        -------
        ClusterSpec

        Raises
        ------
        ConfigError
            Anything else, or a worker count that is not a positive integer.

        Examples
        --------
        >>> ClusterSpec.parse("local:2")
        ClusterSpec(address=None, workers=2)
        >>> ClusterSpec.parse("tcp://scheduler:8786").address
        'tcp://scheduler:8786'
        """
        text = text.strip()
        if text == "local":
            return cls(None, None)
        if text.startswith("local:"):
            n = text.partition(":")[2]
            if not n.isdigit() or int(n) < 1:
                raise ConfigError(f"{source} {text!r}: the worker count after local: must be a positive integer, "
                                  "e.g. local:4")
            return cls(None, int(n))
        if text.startswith(_SCHEMES) and text.partition("://")[2].rpartition(":")[2].isdigit():
            return cls(text, None)
        raise ConfigError(f"{source} {text!r}: write local, local:N (N worker processes on this machine) or a "
                          "Dask scheduler's address, tcp://HOST:PORT (e.g. tcp://scheduler:8786)")

    @classmethod
    def chosen(cls, option: str | None, env: Mapping[str, str] | None = None) -> ClusterSpec | None:
        """The cluster ``--cluster`` (``option``) names, else :data:`ENV`; None: no cluster.

        Parameters
        ----------
        option : str or None
        env : mapping, optional
            Default ``os.environ``.

        Returns
        -------
        ClusterSpec or None
        """
        if option:
            return cls.parse(option)
        value = (os.environ if env is None else env).get(ENV, "").strip()
        return cls.parse(value, source=ENV) if value else None

    def __str__(self) -> str:
        if self.address is not None:
            return self.address
        return "local" + (f":{self.workers}" if self.workers else "")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def connect(spec: ClusterSpec, *, stream: TextIO | None = None, timeout: float = 30.0) -> Iterator[Client]:
    """A Dask client of the cluster ``spec`` names; a local cluster is started, and stopped on exit.

    The dashboard's link (task stream, progress, worker memory) is printed on ``stream``.

    Parameters
    ----------
    spec : ClusterSpec
    stream : file, optional
        Where the dashboard link goes (default standard error).
    timeout : float
        Seconds to wait for a scheduler by address.

    Yields
    ------
    distributed.Client

    Raises
    ------
    ConfigError
        No scheduler answers at ``spec.address``.
    """
    stream = stream if stream is not None else sys.stderr
    cluster = None
    if spec.address is None:
        # one thread per worker process, as the --workers pool: detection is CPU-bound Python/numpy
        port = DASHBOARD_PORT if _free(DASHBOARD_PORT) else 0
        cluster = LocalCluster(n_workers=spec.workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                               dashboard_address=f"127.0.0.1:{port}", silence_logs=logging.ERROR)
        client = Client(cluster)
    else:
        try:
            client = Client(spec.address, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"no Dask scheduler answers at {spec.address} ({exc}): start one (`dask scheduler`, "
                              f"then `dask worker {spec.address}`), or fix --cluster / {ENV}") from exc
    try:
        info = client.scheduler_info()
        dashboard = client.dashboard_link if "dashboard" in info["services"] else \
            "none (the scheduler serves none: install bokeh where it runs)"
        print(f"Dask cluster {spec}: dashboard {dashboard}", file=stream, flush=True)
        if spec.address is not None and not info["workers"]:
            print(f"the scheduler at {spec.address} has no workers yet: tasks wait until one joins "
                  f"(`dask worker {spec.address}`)", file=stream, flush=True)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


@contextlib.contextmanager
def chosen_client(option: str | None, *, stream: TextIO | None = None) -> Iterator[Client | None]:
    """The client of the cluster ``--cluster`` (``option``) or :data:`ENV` names, for the block (a local
    cluster stopped after it); None when neither names one.

    Parameters
    ----------
    option : str or None
        The command's ``--cluster``.
    stream : file, optional
        Where :func:`connect` prints the dashboard link.

    Yields
    ------
    distributed.Client or None
    """
    spec = ClusterSpec.chosen(option)
    if spec is None:
        yield None
        return
    with connect(spec, stream=stream) as client:
        yield client


class WorkerResources(WorkerPlugin):
    """Objects each worker makes once when it joins (a Neo4j driver, a loaded network) and closes when the
    plugin is removed: a task reaches them with :func:`resources`.

    Parameters
    ----------
    factories : dict of str to callable
        ``name -> factory()``; each must pickle (a module-level function, a ``functools.partial`` of one).
    """

    def __init__(self, factories: dict[str, Callable[[], Any]]) -> None:
        self.factories = factories
        self.objects: dict[str, Any] = {}

    def setup(self, worker) -> None:
        self.objects = {name: make() for name, make in self.factories.items()}

    def teardown(self, worker) -> None:
        for obj in self.objects.values():
            close = getattr(obj, "close", None)
            if callable(close):
                close()
        self.objects = {}


@contextlib.contextmanager
def worker_resources(client: Client, factories: dict[str, Callable[[], Any]]) -> Iterator[str]:
    """Make ``factories``' objects on every worker (and on workers that join later) for the duration of the
    block; yield the plugin's name, which tasks pass to :func:`resources`.

    A name of its own per call: two clients of one scheduler (two ingests, an ingest and an explain) never
    replace each other's driver while their tasks run.

    Parameters
    ----------
    client : distributed.Client
    factories : dict of str to callable

    Yields
    ------
    str

    Raises
    ------
    Exception
        A factory's error on a worker (e.g. a :class:`nucleograph.errors.DatabaseError` when a worker
        cannot reach Neo4j), as Dask re-raises it.
    """
    name = f"nucleograph-{uuid.uuid4().hex[:12]}"
    client.register_plugin(WorkerResources(factories), name=name)
    try:
        yield name
    finally:
        # a scheduler that is gone took the plugin with it; nothing else is left to close here
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            client.unregister_worker_plugin(name)


def resources(name: str) -> dict[str, Any]:
    """The objects of the :class:`WorkerResources` plugin ``name`` on the worker running this task.

    Parameters
    ----------
    name : str
        What :func:`worker_resources` yielded.

    Returns
    -------
    dict of str to object
    """
    return get_worker().plugins[name].objects


def scheduler_id(client: Client) -> str:
    """The scheduler's id (unique per scheduler process), which :func:`worker_tag` puts before a worker."""
    return client.scheduler_info(n_workers=0)["id"]


def worker_tag(scheduler: str) -> str:
    """``SCHEDULER-ID/ADDRESS`` of the worker running this task: which cluster it is in and where.

    Parameters
    ----------
    scheduler : str
        :func:`scheduler_id` of the cluster.

    Returns
    -------
    str
    """
    return f"{scheduler}/{get_worker().address}"


def worker_alive(client: Client | None = None) -> Callable[[str, int], bool | None]:
    """``alive(tag, pid)``: whether the worker a :func:`worker_tag` names is still in ``client``'s cluster
    with process ``pid``; None when it cannot tell (a tag of another cluster, or no answer).

    The scheduler drops a worker whose connection breaks (a process killed, a machine lost) and reruns its
    tasks elsewhere: a worker it no longer lists is gone, whichever machine asks. A worker at the same address
    with another process (a fixed ``--worker-port`` after a restart) is not the one that wrote.

    Parameters
    ----------
    client : distributed.Client, optional
        A client of the cluster; default, in a task, the worker's own (``distributed.get_client()``, made
        when first needed: most stores never ask).

    Returns
    -------
    callable
    """

    def alive(tag: str, pid: int) -> bool | None:
        nonlocal client
        client = client if client is not None else get_client()
        scheduler, _, address = tag.partition("/")
        info = client.scheduler_info()
        if info["id"] != scheduler:
            return None
        if address not in info["workers"]:
            return False
        try:
            pids = client.run(os.getpid, workers=[address])
        except (OSError, TimeoutError, KeyError):
            return None
        return pids.get(address) == pid

    return alive
