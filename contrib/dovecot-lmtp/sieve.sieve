# Sieve (RFC 5228) for Dovecot's LMTP: mailing-list mail into its own folder.
require ["fileinto", "mailbox"];

if anyof (exists "list-id", header :contains "subject" "[list]") {
    fileinto :create "Lists";
}
