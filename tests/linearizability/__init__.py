"""A linearizability checker for histories of the config store's entries (Wing & Gong's
search with Lowe's just-in-time linearization and Porcupine's memoisation), its model of a
versioned key, and the JSON form of a history.

    history.py   Operation, and a history's JSON form (dump/load)
    model.py     the versioned key: the store's rules for read, put (with its conditions)
                 and delete, as a pure step function
    checker.py   check(history) -> Result; `python -m tests.linearizability.checker FILE`
"""
