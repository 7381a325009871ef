"""Applying a plan: the executor, the host scripts it runs, what a run did, and crash recovery.

The executor, top down:
    executor          apply_plan: the checks before anything runs, phases in order, the end
    rollout           one phase in batches, and what a failed batch undoes
    host_run          one phase on one host: its script, and what its log says
    confirmation      confirming a phase over a new connection; recovering a lost one
    rollback          rolling a host phase back, and the proof after every rollback
    final_verify      the verification that ends a run, and its rollback when it fails
    run_state         what one apply knows while it runs (shared by the modules above)
    step_results      a phase log turned into step results
    stable_facts      facts without what changes on its own (the facts half of a proof)
    events            progress events for a display

The host scripts (pure text):
    host_phase        one phase on one host: its backup directory, limits and budgets
    snapshot_targets  what a phase snapshots, and whether it arms the lock-out timer
    sh_library        lib.sh, the marker protocol and shell quoting
    snapshot_restore  snapshot.sh and restore.sh
    drain_poll        the wait for a real server's connections to end
    phase_script      the phase script (installs the above, runs the steps)
    followup_scripts  confirm, rollback, recover, status, snapshot-again

Reading and keeping: phaselog (the scripts' output), runresult (what a run did), recovery
(rolling back a run a crash interrupted).
"""
