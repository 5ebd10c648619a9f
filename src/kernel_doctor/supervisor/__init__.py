"""The supervisor: a small parent process around a kernel.

Process model
=============

The launcher (jupyter_client's ``LocalProvisioner``, VS Code, …) starts the
supervisor S as if it were the kernel, with ``start_new_session=True``: S leads a new
session and process group P (pgid = S's pid). S starts:

* the kernel K, **in S's process group P**, as S's child. Anything sent to the whole
  group — jupyter_client's interrupt (``killpg(P, SIGINT)``), terminate and kill —
  reaches K and K's own children directly, exactly as it would without S.
* a sentinel N, a forked copy of S, also in P, that blocks the forwarded signals and
  reports each one it takes to S over a pipe. N only ever receives group-wide
  signals, so it tells S which of S's signals were sent to the group.

Who receives what:

================================  ===================  ==================================
sent                              reaches              S does
================================  ===================  ==================================
``killpg(P, SIGINT/TERM/…)``      S, K, K's children,  nothing: K already has it (N saw
(jupyter_client)                  N                    it too), so it arrives once
``kill(S, SIGINT/TERM/…)``        S only               forwards it to K (N saw nothing
(VS Code interrupts this way)                          within ``GROUP_WINDOW``)
``killpg(P, SIGKILL)``            everyone             (dies with the rest)
``kill(S, SIGKILL)``              S                    K dies by PR_SET_PDEATHSIG, N too
K exits or is killed              S gets SIGCHLD       diagnoses, reports, exits as K did
================================  ===================  ==================================

S exits with K's status: K's exit code, or K's fatal signal re-raised on S itself
with S's core dumps disabled. K's stdout is S's; K's stderr goes through a pipe S
copies to its own stderr (a reader thread keeps the pipe drained, so a slow
consumer of S's stderr never blocks K) and keeps a tail of. K's ``oom_score_adj``
is raised so the OOM killer picks K, not S.
"""
