"""A PyGithub workflow against ghgate (tests/it/clients.rs runs it): what a new user would try.

Reads a repository and a lazy attribute, its README, every issue (a list PyGithub builds from
the repository's body URL and pages through by `Link`), posts a commit status (a URL PyGithub
builds from the commit's body URL), reads the rate limit. Prints what it saw as JSON.
PyGithub refuses any URL whose host and port are not its base URL's, so every body URL it
follows must point at the gateway.
"""
import json
import os

from github import Auth, Github

gh = Github(auth=Auth.Token(os.environ["GHGATE_TOKEN"]), base_url=os.environ["GHGATE_URL"], retry=None)
repo = gh.get_repo("octo/hello")
out = {
    "full_name": repo.full_name,
    "owner": repo.owner.login,
    "readme": repo.get_readme().decoded_content.decode(),
    "issues": [issue.number for issue in repo.get_issues(state="all")],
}
commit = repo.get_commit(os.environ["GHGATE_SHA"])
out["status"] = commit.create_status(state="success", context="ci/gate").state
rate = gh.get_rate_limit()
out["rate_limit"] = rate.raw_data if hasattr(rate, "raw_data") else str(rate)
print(json.dumps(out))
