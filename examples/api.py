"""rayfleet's Python API, as in the README: the cluster, a job of your own, services, a
translation, and Ray itself with the cluster's token.

Run it from the repository root while a cluster runs:  python examples/api.py
"""

import ray

import rayfleet

c = rayfleet.connect()                       # the local cluster; rayfleet.connect("fleet.yaml") for a fleet
print(f"cluster: {c.description} (Ray address {c.address})")

job = c.submit(["python", "train.py", "--epochs", "1"], working_dir="examples/own-code")
end = job.follow(on_waiting=print)           # says so when it waits for CPUs; on_line=print streams its log
loss = next(line for line in end.tail if line.startswith("final validation loss"))
print(f"job {job.id}: {end.info.status}, {loss}")

for s in c.services():
    print(f"service {s.name} ({s.kind}, {s.status}): {s.url}")
    if s.kind == "translator":
        print("  The cat sleeps. ->", c.translate("The cat sleeps.", service=s.name))

c.init()                                     # ray.init on the cluster with its token (notebooks, scripts)


@ray.remote
def where() -> str:
    return ray.util.get_node_ip_address()


print("a Ray task ran on", ray.get(where.remote()))
