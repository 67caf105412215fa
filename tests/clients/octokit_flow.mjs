// An Octokit workflow against ghgate (tests/it/clients.rs runs it): a repository, its README as
// JSON and raw, every issue through `octokit.paginate` on the repository's body URL (as
// `octokit.request(repo.issues_url)` users do), a commit status, the rate limit, and one
// GraphQL query asked twice through `octokit.graphql`. Prints what it saw as JSON.
import { Octokit } from "@octokit/rest";

const octokit = new Octokit({ auth: process.env.GHGATE_TOKEN, baseUrl: process.env.GHGATE_URL });
const owner = "octo";
const repo = "hello";
const { data: repository } = await octokit.rest.repos.get({ owner, repo });
const { data: readme } = await octokit.rest.repos.getReadme({ owner, repo });
const { data: raw } = await octokit.rest.repos.getReadme({ owner, repo, mediaType: { format: "raw" } });
const issuesUrl = repository.issues_url.replace("{/number}", "");
const issues = await octokit.paginate(`GET ${issuesUrl}`);
const { data: status } = await octokit.rest.repos.createCommitStatus({
  owner,
  repo,
  sha: process.env.GHGATE_SHA,
  state: "success",
  context: "ci/gate",
});
const { data: rate } = await octokit.rest.rateLimit.get();
const repositoryInfo =
  "query RepositoryInfo($owner: String!, $name: String!) { repository(owner: $owner, name: $name) { name } }";
const graphql = [];
for (let i = 0; i < 2; i++) {
  graphql.push(await octokit.graphql(repositoryInfo, { owner, name: repo }));
}
console.log(
  JSON.stringify({
    full_name: repository.full_name,
    issues_url: issuesUrl,
    readme: Buffer.from(readme.content, "base64").toString(),
    raw_readme: typeof raw === "string" ? raw : new TextDecoder().decode(raw),
    issues: issues.map((issue) => issue.number),
    status: status.state,
    rate_limit: rate,
    graphql,
  }),
);
